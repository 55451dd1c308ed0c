"""Flax modules of LIIF, built from a checkpoint's own spec (``build_model``)."""

from __future__ import annotations

from liif_jax.models.edsr import EDSR
from liif_jax.models.liif import LIIF, gather_features
from liif_jax.models.mlp import MLP
from liif_jax.models.spec import normalize_spec

__all__ = ["EDSR", "LIIF", "MLP", "build_model", "gather_features", "normalize_spec"]


def build_model(spec: dict) -> LIIF:
    """The LIIF module a (normalised or raw) spec describes; no registry, one ``if``."""
    spec = normalize_spec(spec)
    args = spec["args"]
    enc = args["encoder_spec"]["args"]
    encoder = EDSR(n_resblocks=enc["n_resblocks"], n_feats=enc["n_feats"],
                   res_scale=float(enc["res_scale"]))
    im = args["imnet_spec"]["args"]
    imnet = MLP(hidden_list=tuple(im["hidden_list"]), out_dim=im["out_dim"])
    return LIIF(encoder=encoder, imnet=imnet, local_ensemble=args["local_ensemble"],
                feat_unfold=args["feat_unfold"], cell_decode=args["cell_decode"])
