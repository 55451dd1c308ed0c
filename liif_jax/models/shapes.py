"""The parameter names and shapes a LIIF spec needs, computed from the spec alone.

Why not ``jax.eval_shape(module.init, ...)``: that traces the whole model, which for a
hostile spec (thousands of blocks) costs minutes and gigabytes before a single name is
compared. Every weight loader (``.pth`` converter, ``.safetensors`` reader, ``export``) checks
a file's names and shapes against ``param_shapes`` *before* it reads or allocates tensors.
``tests/test_shapes.py`` holds this equal to ``jax.eval_shape`` of ``build_model`` on every
supported kind of spec, so the two cannot drift apart.

Layouts are Flax's: convolution kernels HWIO, Dense kernels (in, out). Pure Python: no JAX.
"""

from __future__ import annotations


def param_shapes(spec: dict) -> dict[str, tuple[int, ...]]:
    """``{flat name: shape}`` of every parameter of the model a *normalised* spec describes
    (flat names as in our weight files: ``encoder/head/kernel``)."""
    args = spec["args"]
    encoder_spec = args["encoder_spec"]
    name = encoder_spec["name"]
    # One branch per encoder: each returns its parameters and its feature channels.
    if name in ("edsr-baseline", "edsr"):
        encoder, feat_dim = _edsr_shapes(encoder_spec["args"])
    elif name == "rdn":
        encoder, feat_dim = _rdn_shapes(encoder_spec["args"])
    else:
        raise ValueError(f"param_shapes has no branch for encoder {name!r} "
                         "(add one in liif_jax/models/shapes.py)")
    shapes = {f"encoder/{k}": v for k, v in encoder.items()}
    # The decoder's input: the (3x3-unfolded) feature, the relative coordinate, the cell.
    in_dim = feat_dim * (9 if args["feat_unfold"] else 1) + 2 + (2 if args["cell_decode"] else 0)
    shapes.update({f"imnet/{k}": v for k, v in _mlp_shapes(in_dim, args["imnet_spec"]["args"]).items()})
    return shapes


def param_count(spec: dict) -> int:
    """Total number of parameters of a normalised spec's model."""
    total = 0
    for shape in param_shapes(spec).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _conv(kernel: int, c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
    return {"kernel": (kernel, kernel, c_in, c_out), "bias": (c_out,)}


def _prefixed(prefix: str, params: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in params.items()}


def _edsr_shapes(enc: dict) -> tuple[dict, int]:
    """EDSR without upsampler (models/edsr.py): head, n_resblocks x (conv_0, conv_1), body_conv."""
    n_feats = enc["n_feats"]
    shapes = _prefixed("head", _conv(3, 3, n_feats))
    for i in range(enc["n_resblocks"]):
        shapes.update(_prefixed(f"body_{i}/conv_0", _conv(3, n_feats, n_feats)))
        shapes.update(_prefixed(f"body_{i}/conv_1", _conv(3, n_feats, n_feats)))
    shapes.update(_prefixed("body_conv", _conv(3, n_feats, n_feats)))
    return shapes, n_feats


# (D blocks, C convolutions per block, G growth) of RDN's configs; the same table as
# (D blocks, C convolutions per block, G growth) of the original's two RDN configurations;
# defined here, where no JAX is needed, and used by models/rdn.py.
RDN_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}


def _rdn_shapes(enc: dict) -> tuple[dict, int]:
    """RDN without upsampler (models/rdn.py): SFENet1, SFENet2, D blocks x (C growing 3x3
    convs, 1x1 LFF), GFF_0 (1x1 over the D block outputs), GFF_1 (3x3)."""
    g0 = enc["G0"]
    n_blocks, n_layers, growth = RDN_CONFIGS[enc["RDNconfig"]]
    shapes = _prefixed("SFENet1", _conv(3, 3, g0))
    shapes.update(_prefixed("SFENet2", _conv(3, g0, g0)))
    for i in range(n_blocks):
        for c in range(n_layers):
            shapes.update(_prefixed(f"RDB_{i}/conv_{c}", _conv(3, g0 + c * growth, growth)))
        shapes.update(_prefixed(f"RDB_{i}/LFF", _conv(1, g0 + n_layers * growth, g0)))
    shapes.update(_prefixed("GFF_0", _conv(1, n_blocks * g0, g0)))
    shapes.update(_prefixed("GFF_1", _conv(3, g0, g0)))
    return shapes, g0


def _mlp_shapes(in_dim: int, im: dict) -> dict[str, tuple[int, ...]]:
    """MLP (models/mlp.py): dense_i for each hidden width, then dense_n to out_dim."""
    shapes = {}
    widths = [*im["hidden_list"], im["out_dim"]]
    for i, width in enumerate(widths):
        shapes[f"dense_{i}/kernel"] = (in_dim, width)
        shapes[f"dense_{i}/bias"] = (width,)
        in_dim = width
    return shapes
