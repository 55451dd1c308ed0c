"""The paper's RDN-LIIF recipe (the original's ``train_rdn-liif.yaml``): the EDSR-baseline
recipe with the encoder swapped for RDN (config B, G0 64: the released ``rdn-liif.pth``)
and the same 4x256 MLP, 48x48 crops at scales U(1, 4), 2304 queries per crop, batch 16, Adam
1e-4 halved at 200k/400k/600k/800k of 1M steps.

RDN-B has 22.3 M parameters and ~44 MFLOP per input pixel (18x EDSR-baseline's encoder); with
the decoder's share unchanged a step costs about 9x a 'paper' step (by FLOPs): a GPU/TPU recipe. Fine-tune the authors' weights with
``liif-jax train --config rdn --init-from rdn-liif.pth --data ... --steps N``.
"""

import dataclasses

from liif_jax.configs import TrainConfig


def get_config() -> TrainConfig:
    base = TrainConfig()
    model = {"name": "liif", "args": {
        "encoder_spec": {"name": "rdn", "args": {"no_upsampling": True}},
        "imnet_spec": base.model["args"]["imnet_spec"],
    }}
    return dataclasses.replace(base, model=model)
