"""param_shapes (names and shapes from a spec, no tracing) equals what Flax builds."""

import pytest

from liif_jax.models import build_model
from liif_jax.models.shapes import param_count, param_shapes
from liif_jax.models.spec import normalize_spec
from liif_jax.weights import expected_param_shapes


def _spec(encoder="edsr-baseline", enc_args=None, hidden=(256, 256, 256, 256), **flags):
    return {"name": "liif", "args": {
        "encoder_spec": {"name": encoder, "args": {"no_upsampling": True, **(enc_args or {})}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": list(hidden)}},
        **flags}}


SPECS = {
    "edsr-baseline": _spec(),
    "edsr": _spec("edsr", {"n_resblocks": 3, "n_feats": 16}),
    "tiny": _spec(enc_args={"n_resblocks": 2, "n_feats": 8}, hidden=(16, 16)),
    "no-resblocks": _spec(enc_args={"n_resblocks": 0, "n_feats": 4}, hidden=(5,)),
    "nocell": _spec(enc_args={"n_resblocks": 1, "n_feats": 8}, hidden=(16,), cell_decode=False),
    "nounfold": _spec(enc_args={"n_resblocks": 1, "n_feats": 8}, hidden=(16,), feat_unfold=False),
    "noensemble": _spec(enc_args={"n_resblocks": 1, "n_feats": 8}, hidden=(16,), local_ensemble=False),
    "alloff": _spec(enc_args={"n_resblocks": 1, "n_feats": 8}, hidden=(7, 9, 11), cell_decode=False,
                    feat_unfold=False, local_ensemble=False),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_param_shapes_equal_eval_shape_of_build_model(name):
    spec = normalize_spec(SPECS[name])
    assert param_shapes(spec) == expected_param_shapes(build_model(spec))


def test_param_count_of_the_bundled_model():
    # The authors' EDSR-baseline-LIIF: 1,567,299 parameters once the MeanShift pair is dropped.
    assert param_count(normalize_spec(SPECS["edsr-baseline"])) == 1_567_299
