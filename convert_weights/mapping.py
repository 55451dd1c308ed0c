"""Torch state-dict names and layouts -> our flat Flax parameter names and layouts.

Torch convolutions are OIHW, Flax's are HWIO; torch Linear weights are (out, in), Flax Dense
kernels (in, out); a 1x1 convolution (RDN's LFF and GFF fusions) is the same 4-D case. The
EDSR MeanShift pairs are in every EDSR-LIIF checkpoint but unused by the encoder's forward, so
they are dropped (the converter says so); RDN has none.

Names are mapped from the spec's own numbers (EDSR's ``n_resblocks`` places its last
convolution); which RDN blocks and layers exist is the spec's business: the caller compares
every mapped name and shape with what the spec needs (``liif_jax.models.shapes``) before any
tensor is read, so an RDB beyond the spec's is refused there.
"""

from __future__ import annotations

import re

import numpy as np

from convert_weights.errors import CheckpointError
from convert_weights.torch_pickle import TensorRef

# Present in every EDSR checkpoint, never applied by LIIF's encoder.
KNOWN_UNUSED = re.compile(r"^encoder\.(sub_mean|add_mean)\.(weight|bias)$")


def torch_to_flax_name(name: str, n_resblocks: int) -> str | None:
    """Our name for a torch state-dict entry, or None if no parameter of ours matches."""
    m = re.fullmatch(r"encoder\.head\.0\.(weight|bias)", name)
    if m:
        return f"encoder/head/{_leaf(m[1])}"
    m = re.fullmatch(r"encoder\.body\.(\d+)\.body\.([02])\.(weight|bias)", name)
    if m and int(m[1]) < n_resblocks:
        return f"encoder/body_{int(m[1])}/conv_{int(m[2]) // 2}/{_leaf(m[3])}"
    m = re.fullmatch(r"encoder\.body\.(\d+)\.(weight|bias)", name)
    if m and int(m[1]) == n_resblocks:
        return f"encoder/body_conv/{_leaf(m[2])}"
    m = re.fullmatch(r"imnet\.layers\.(\d+)\.(weight|bias)", name)
    if m and int(m[1]) % 2 == 0:
        return f"imnet/dense_{int(m[1]) // 2}/{_leaf(m[2])}"
    return None


def rdn_torch_to_flax_name(name: str) -> str | None:
    """Our name for a torch state-dict entry of an RDN-LIIF (``liif_jax.models.rdn`` names),
    or None if no parameter of ours matches. Any block and layer number maps; whether the
    spec's RDN config has it is checked with the shapes (see the module's docstring)."""
    m = re.fullmatch(r"encoder\.(SFENet[12])\.(weight|bias)", name)
    if m:
        return f"encoder/{m[1]}/{_leaf(m[2])}"
    m = re.fullmatch(r"encoder\.RDBs\.(\d+)\.convs\.(\d+)\.conv\.0\.(weight|bias)", name)
    if m:
        return f"encoder/RDB_{int(m[1])}/conv_{int(m[2])}/{_leaf(m[3])}"
    m = re.fullmatch(r"encoder\.RDBs\.(\d+)\.LFF\.(weight|bias)", name)
    if m:
        return f"encoder/RDB_{int(m[1])}/LFF/{_leaf(m[2])}"
    m = re.fullmatch(r"encoder\.GFF\.([01])\.(weight|bias)", name)
    if m:
        return f"encoder/GFF_{m[1]}/{_leaf(m[2])}"
    m = re.fullmatch(r"imnet\.layers\.(\d+)\.(weight|bias)", name)
    if m and int(m[1]) % 2 == 0:
        return f"imnet/dense_{int(m[1]) // 2}/{_leaf(m[2])}"
    return None


def _name_mapper(encoder_spec: dict):
    """name -> our name (or None) for a normalised encoder spec; plus whether the EDSR
    MeanShift entries are expected (and dropped)."""
    if encoder_spec["name"] == "rdn":
        return rdn_torch_to_flax_name, False
    return (lambda name: torch_to_flax_name(name, encoder_spec["args"]["n_resblocks"])), True


def _leaf(torch_leaf: str) -> str:
    return "kernel" if torch_leaf == "weight" else "bias"


def torch_to_flax_array(value: np.ndarray) -> np.ndarray:
    """Re-layout one tensor: OIHW -> HWIO for 4-D, (out, in) -> (in, out) for 2-D."""
    value = np.asarray(value, dtype=np.float32)
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


def torch_to_flax_shape(shape: tuple) -> tuple:
    """The shape ``torch_to_flax_array`` gives a tensor of torch shape ``shape``."""
    shape = tuple(shape)
    if len(shape) == 4:
        return (shape[2], shape[3], shape[1], shape[0])
    if len(shape) == 2:
        return shape[::-1]
    return shape


def map_state_dict(state_dict, encoder_spec: dict):
    """Return (flat Flax params, dropped known-unused names) for a checkpoint whose normalised
    encoder spec is ``encoder_spec``. Unknown names are an error; missing and extra names and
    every shape are checked against the spec by the caller, before it reads a tensor."""
    if not isinstance(state_dict, dict):
        raise CheckpointError("checkpoint's model 'sd' is not a state dict")
    to_flax_name, has_mean_shift = _name_mapper(encoder_spec)
    params, dropped, unknown = {}, [], []
    for name, value in state_dict.items():
        if not isinstance(value, (np.ndarray, TensorRef)):
            raise CheckpointError(f"checkpoint entry {name!r} is not a tensor")
        if has_mean_shift and KNOWN_UNUSED.match(str(name)):
            dropped.append(name)
            continue
        ours = to_flax_name(str(name))
        if ours is None:
            unknown.append(name)
            continue
        if value.dtype.kind != "f":
            raise CheckpointError(f"checkpoint entry {name!r} is not floating point ({value.dtype})")
        if ours in params:
            raise CheckpointError(f"checkpoint has two entries for parameter {ours}, e.g. {name!r}")
        # A TensorRef stays unread: the caller first checks every name and shape against
        # the spec (torch_to_flax_shape), so a file cannot make us read what we would refuse.
        params[ours] = value if isinstance(value, TensorRef) else torch_to_flax_array(value)
    if unknown:
        raise CheckpointError(
            f"checkpoint has {len(unknown)} unexpected entr{'y' if len(unknown) == 1 else 'ies'} "
            f"for its spec, e.g. {unknown[0]!r}"
        )
    return params, dropped
