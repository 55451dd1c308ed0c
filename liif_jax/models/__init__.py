"""Flax modules of LIIF, built from a checkpoint's own spec (``build_model``)."""

from __future__ import annotations

from liif_jax.models.edsr import EDSR
from liif_jax.models.liif import LIIF, gather_features
from liif_jax.models.mlp import MLP
from liif_jax.models.rdn import RDN
from liif_jax.models.shapes import RDN_CONFIGS
from liif_jax.models.spec import normalize_spec

__all__ = ["EDSR", "LIIF", "MLP", "RDN", "build_model", "gather_features", "normalize_spec"]


def build_encoder(encoder_spec: dict):
    """The encoder module of a normalised ``encoder_spec``: RDN for 'rdn', else EDSR."""
    enc = encoder_spec["args"]
    if encoder_spec["name"] == "rdn":
        n_blocks, n_layers, growth = RDN_CONFIGS[enc["RDNconfig"]]
        return RDN(n_blocks=n_blocks, n_layers=n_layers, growth=growth, growth0=enc["G0"])
    return EDSR(n_resblocks=enc["n_resblocks"], n_feats=enc["n_feats"],
                res_scale=float(enc["res_scale"]))


def describe_encoder(encoder_spec: dict) -> str:
    """One line for people: 'edsr-baseline (16 blocks x 64)', 'rdn (config B: 16 blocks x 8
    convs, G 64, G0 64)'."""
    enc = encoder_spec["args"]
    if encoder_spec["name"] == "rdn":
        n_blocks, n_layers, growth = RDN_CONFIGS[enc["RDNconfig"]]
        return (f"rdn (config {enc['RDNconfig']}: {n_blocks} blocks x {n_layers} convs, "
                f"G {growth}, G0 {enc['G0']})")
    return f"{encoder_spec['name']} ({enc['n_resblocks']} blocks x {enc['n_feats']})"


def build_model(spec: dict) -> LIIF:
    """The LIIF module a (normalised or raw) spec describes; no registry, one ``if``."""
    spec = normalize_spec(spec)
    args = spec["args"]
    encoder = build_encoder(args["encoder_spec"])
    im = args["imnet_spec"]["args"]
    imnet = MLP(hidden_list=tuple(im["hidden_list"]), out_dim=im["out_dim"])
    return LIIF(encoder=encoder, imnet=imnet, local_ensemble=args["local_ensemble"],
                feat_unfold=args["feat_unfold"], cell_decode=args["cell_decode"])
