"""The paper's EDSR-baseline-LIIF recipe (the original's ``train_edsr-baseline-liif.yaml``).

On DIV2K's 800 training images this is 1000 steps per epoch and 1M steps in all (about 31 h
on the authors' GPU). Fine-tuning the bundled weights on your own photos usually needs far
fewer steps: ``liif-jax train --config paper --init-from bundled --steps 20000 ...``.
"""

from liif_jax.configs import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig()
