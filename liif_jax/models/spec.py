"""The model spec: what a checkpoint says it is, with the original's defaults filled in.

The authors' checkpoints are self-describing: ``model = {'name': 'liif', 'args': {...}}`` names
the encoder and decoder and their arguments. We keep that shape (so a spec reads the same in
the original repository and here) and store it, completed with every default, inside our
weight files. ``normalize_spec`` is the single place that knows the defaults and refuses what
we cannot build, with a message that says what is supported.
"""

from __future__ import annotations

import json
import math
import reprlib

from liif_jax.errors import CheckpointError
from liif_jax.models.shapes import RDN_CONFIGS

SUPPORTED = (
    "supported: model 'liif' with encoder 'edsr-baseline', 'edsr' or 'rdn' (no_upsampling) "
    "and decoder 'mlp'"
)

# Defaults of the original's make_edsr_baseline / make_edsr.
_EDSR_DEFAULTS = {
    "edsr-baseline": {"n_resblocks": 16, "n_feats": 64, "res_scale": 1, "scale": 2,
                      "no_upsampling": False, "rgb_range": 1},
    "edsr": {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1, "scale": 2,
             "no_upsampling": False, "rgb_range": 1},
}
# Defaults of the original's make_rdn (models/rdn.py): config B, the released rdn-liif.pth.
_RDN_DEFAULTS = {"G0": 64, "RDNkSize": 3, "RDNconfig": "B", "scale": 2, "no_upsampling": False}
_LIIF_DEFAULTS = {"local_ensemble": True, "feat_unfold": True, "cell_decode": True}

# Upper bounds on what a spec may ask for, checked before any model is built or any tensor
# read. Far above every published LIIF (the largest, full EDSR-LIIF, has ~40 M parameters),
# but they stop a few hundred bytes of hostile spec from making us trace or allocate a giant
# model. Stated in README (convert section) and in each refusal.
MAX_PARAMETERS = 250_000_000  # 1 GB of float32
MAX_BLOCKS = 1_000  # n_resblocks (and any other encoder's block count)
MAX_CHANNELS = 16_384  # n_feats, G0, every MLP width
MAX_HIDDEN_LAYERS = 100  # entries of the MLP's hidden_list
MAX_SPEC_JSON = 1 << 16  # characters of the stored spec (a real one takes ~300)


def _refuse(what: str) -> CheckpointError:
    return CheckpointError(f"unsupported architecture: {what} ({SUPPORTED})")


def _describe(value) -> str:
    """A short one-line repr of a value from an untrusted file: never huge, never nested
    deeper than reprlib allows, and no int-to-text conversion of a giant number."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 15:
        return f"an integer of {value.bit_length()} bits"
    try:
        return reprlib.repr(value)[:80]
    except Exception:  # e.g. a giant int nested inside a list
        return f"a {type(value).__name__}"


def _check_int(value, name, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointError(f"model spec has an invalid {name}: {_describe(value)}")
    if maximum is not None and value > maximum:
        raise CheckpointError(f"model spec has {name}={_describe(value)}, over liif-jax's limit "
                              f"of {maximum:,} (limits: README, 'convert')")
    return value


def _check_size(spec: dict) -> None:
    """Refuse a normalised spec whose model is over MAX_PARAMETERS, or whose stored form
    would not be plain, small JSON (e.g. a tensor or a giant number in an unused argument)."""
    from liif_jax.models.shapes import param_count

    try:
        text = spec_to_json(spec)
    except (TypeError, ValueError, RecursionError):
        raise CheckpointError("model spec holds values that are not plain numbers, strings "
                              "or booleans") from None
    if len(text) > MAX_SPEC_JSON:
        raise CheckpointError(f"model spec is {len(text):,} characters long, over liif-jax's "
                              f"limit of {MAX_SPEC_JSON:,}")
    count = param_count(spec)
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"model spec describes {count:,} parameters, over liif-jax's limit "
                              f"of {MAX_PARAMETERS:,} (limits: README, 'convert')")


def _normalize_edsr_args(enc) -> dict:
    """The complete, validated args of an 'edsr-baseline' or 'edsr' encoder spec."""
    if not isinstance(enc, dict) or enc.get("name") not in _EDSR_DEFAULTS:
        raise _refuse(f"encoder {enc.get('name') if isinstance(enc, dict) else enc!r}")
    enc_args = dict(_EDSR_DEFAULTS[enc["name"]])
    extra = set(enc.get("args") or {}) - set(enc_args)
    if extra:
        raise _refuse(f"encoder argument(s) {sorted(extra)}")
    enc_args.update(enc.get("args") or {})
    if not enc_args["no_upsampling"]:
        raise _refuse("an EDSR encoder with its upsampler (LIIF uses no_upsampling=True)")
    _check_int(enc_args["n_resblocks"], "n_resblocks", 0, MAX_BLOCKS)
    _check_int(enc_args["n_feats"], "n_feats", 1, MAX_CHANNELS)
    res_scale = enc_args["res_scale"]
    if isinstance(res_scale, bool) or not isinstance(res_scale, (int, float)) or not math.isfinite(res_scale):
        raise CheckpointError(f"model spec has an invalid res_scale: {res_scale!r}")
    return enc_args


def _normalize_rdn_args(given) -> dict:
    """The complete, validated args of an 'rdn' encoder spec (the original's make_rdn)."""
    if not isinstance(given, dict):
        raise CheckpointError("model spec's encoder 'args' is not a mapping")
    extra = set(given) - set(_RDN_DEFAULTS)
    if extra:
        raise _refuse(f"rdn argument(s) {sorted(extra)}")
    enc_args = {**_RDN_DEFAULTS, **given}
    if not enc_args["no_upsampling"]:
        raise _refuse("an RDN encoder with its upsampler (LIIF uses no_upsampling=True)")
    if enc_args["RDNconfig"] not in RDN_CONFIGS:
        raise _refuse(f"RDNconfig {enc_args['RDNconfig']!r} (the original defines 'A' and 'B')")
    k_size = enc_args["RDNkSize"]
    if isinstance(k_size, bool) or not isinstance(k_size, int) or k_size != 3:
        raise _refuse(f"an RDN with RDNkSize={enc_args['RDNkSize']!r} (only 3x3 kernels)")
    _check_int(enc_args["G0"], "G0", 1, MAX_CHANNELS)
    return enc_args


def normalize_spec(spec) -> dict:
    """Return a complete, validated copy of a LIIF model spec (the checkpoint's ``model`` minus
    ``sd``), or raise CheckpointError naming what is wrong or unsupported."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError("checkpoint has no model spec (expected {'name': ..., 'args': ...})")
    name = spec["name"]
    if name != "liif":
        raise _refuse(f"model {name!r}")
    args = spec.get("args") or {}
    if not isinstance(args, dict):
        raise CheckpointError("model spec 'args' is not a mapping")
    unknown = set(args) - {"encoder_spec", "imnet_spec", *_LIIF_DEFAULTS}
    if unknown:
        raise _refuse(f"liif argument(s) {sorted(unknown)}")

    enc = args.get("encoder_spec")
    if isinstance(enc, dict) and enc.get("name") == "rdn":
        enc_args = _normalize_rdn_args(enc.get("args") or {})
    else:
        enc_args = _normalize_edsr_args(enc)

    imnet = args.get("imnet_spec")
    if imnet is None:
        raise _refuse("LIIF without an imnet (feature-only nearest sampling)")
    if not isinstance(imnet, dict) or imnet.get("name") != "mlp":
        raise _refuse(f"decoder {imnet.get('name') if isinstance(imnet, dict) else imnet!r}")
    im_args = dict(imnet.get("args") or {})
    extra = set(im_args) - {"out_dim", "hidden_list", "in_dim"}
    if extra:
        raise _refuse(f"mlp argument(s) {sorted(extra)}")
    out_dim = _check_int(im_args.get("out_dim", 3), "out_dim", 1)
    if out_dim != 3:
        raise _refuse(f"an mlp with out_dim={out_dim} (RGB output needs 3)")
    hidden = im_args.get("hidden_list")
    if not isinstance(hidden, (list, tuple)) or not hidden:
        raise CheckpointError("model spec has no mlp hidden_list")
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise CheckpointError(f"model spec has {len(hidden):,} mlp hidden layers, over liif-jax's "
                              f"limit of {MAX_HIDDEN_LAYERS}")
    hidden = [_check_int(h, "hidden_list entry", 1, MAX_CHANNELS) for h in hidden]
    im_args = {"out_dim": out_dim, "hidden_list": hidden}

    flags = dict(_LIIF_DEFAULTS)
    for key in _LIIF_DEFAULTS:
        if key in args:
            if not isinstance(args[key], bool):
                raise CheckpointError(f"model spec has a non-boolean {key}: {args[key]!r}")
            flags[key] = args[key]

    normalized = {
        "name": "liif",
        "args": {
            "encoder_spec": {"name": enc["name"], "args": enc_args},
            "imnet_spec": {"name": "mlp", "args": im_args},
            **flags,
        },
    }
    _check_size(normalized)
    return normalized


def spec_to_json(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def spec_from_json(text: str) -> dict:
    try:
        return normalize_spec(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"weight file has an unreadable model spec ({str(exc)[:80]})") from None
    except RecursionError:
        raise CheckpointError("weight file has an unreadable model spec (nested too deeply)") from None
