"""RDN-LIIF: the spec, the conversion of the authors' names and layouts (the released
``rdn-liif.pth``'s exact state dict), parity with the authors' code on a seeded RDN-A
checkpoint, exact tiles and the halo, and the rest of the LIIF family the authors' code can
save (every flag, full EDSR, a checkpoint with optimizer state)."""

import json

import numpy as np
import pytest

import torch_format as tf
from conftest import DEV, FIXTURES, SHARED, read_rgb01
from convert_weights.mapping import map_state_dict
from liif_jax import engine, tiling
from liif_jax.errors import CheckpointError, RequestError
from liif_jax.models import LIIF, MLP, RDN, build_model, normalize_spec
from liif_jax.train.step import init_params
from liif_jax.weights import LiifModel, check_params, expected_param_shapes, flat_params, load_model

FAMILY = FIXTURES / "family"  # the tiny family files and manifest, copied from ../shared
MANIFEST = json.loads((FAMILY / "manifest.json").read_text())
RDN_A_PTH = SHARED / "golden" / "family" / "rdn-a-liif.pth"  # 23 MB: read in place
needs_rdn_a = pytest.mark.skipif(not RDN_A_PTH.is_file(),
                                 reason=f"{RDN_A_PTH} absent (the shared ground truth beside the checkout)")
# A random RDN's clamped output varies little (std ~0.004), so 1e-4 would not discriminate.
OUT_TOL = 1e-5
FEAT_TOL = 1e-4


def rdn_spec(**encoder_args):
    return {"name": "liif", "args": {
        "encoder_spec": {"name": "rdn", "args": {"no_upsampling": True, **encoder_args}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256, 256]}}}}


# ---------------------------------------------------------------- spec

def test_rdn_spec_gets_the_originals_defaults():
    enc = normalize_spec(rdn_spec())["args"]["encoder_spec"]
    assert enc == {"name": "rdn", "args": {"G0": 64, "RDNkSize": 3, "RDNconfig": "B", "scale": 2,
                                           "no_upsampling": True}}
    b = build_model(rdn_spec()).encoder
    assert (b.n_blocks, b.n_layers, b.growth, b.growth0) == (16, 8, 64, 64)
    a = build_model(rdn_spec(RDNconfig="A", G0=32)).encoder
    assert (a.n_blocks, a.n_layers, a.growth, a.growth0, a.out_dim) == (20, 6, 32, 32, 32)


def test_rdn_halo_counts_3x3_convolutions_only():
    # RDN-B: SFENet1, SFENet2, 16 blocks x 8 convs, GFF's 3x3; the 1x1 fusions add nothing.
    assert build_model(rdn_spec()).encoder.n_convs == 2 + 16 * 8 + 1 == 131
    assert tiling.halo_for(131) == 132  # + the unfold's 3x3
    assert build_model(rdn_spec(RDNconfig="A")).encoder.n_convs == 2 + 20 * 6 + 1


@pytest.mark.parametrize("config", ["A", "B"])
@pytest.mark.parametrize("g0", [64, 24])
def test_shapes_from_the_spec_alone_equal_the_traced_model(config, g0):
    """``models.shapes`` (pure Python, checked before any tensor is read) must agree with
    what the Flax RDN really declares."""
    from liif_jax.models.shapes import param_shapes

    spec = normalize_spec(rdn_spec(RDNconfig=config, G0=g0))
    assert param_shapes(spec) == expected_param_shapes(build_model(spec))


@pytest.mark.parametrize("args,message", [
    ({"RDNconfig": "C"}, "RDNconfig 'C'"),
    ({"RDNkSize": 5}, "RDNkSize=5"),
    ({"no_upsampling": False}, "upsampler"),
    ({"n_resblocks": 4}, "rdn argument(s) ['n_resblocks']"),
    ({"G0": 0}, "invalid G0"),
    ({"G0": True}, "invalid G0"),
])
def test_bad_rdn_specs_are_refused_by_name(args, message):
    with pytest.raises(CheckpointError) as err:
        normalize_spec(rdn_spec(**args))
    assert message in str(err.value)


# ---------------------------------------------------------------- the released rdn-liif.pth

def released_state_dict():
    """Zero tensors with exactly the names and shapes of the authors' rdn-liif.pth."""
    entry = MANIFEST["shapes_only"]["rdn-liif"]
    return entry, {name: np.zeros(shape, np.float32) for name, shape in entry["state_dict"]}


def test_released_rdn_liif_state_dict_maps_onto_the_model_exactly():
    entry, sd = released_state_dict()
    assert len(sd) == 306 and entry["params"] == 22_320_835
    spec = normalize_spec(entry["spec"])
    module = build_model(spec)
    params, dropped = map_state_dict(sd, spec["args"]["encoder_spec"])
    assert dropped == []
    assert len(params) == 306  # one of ours per torch entry: no two names collide
    check_params(module, params, "rdn-liif.pth")  # every name and shape, nothing missing
    assert sum(int(np.prod(s)) for s in expected_param_shapes(module).values()) == 22_320_835
    # Layouts: OIHW -> HWIO for the 3x3s and the 1x1 fusions alike, (out, in) -> (in, out).
    assert params["encoder/RDB_15/conv_7/kernel"].shape == (3, 3, 512, 64)
    assert params["encoder/RDB_0/LFF/kernel"].shape == (1, 1, 576, 64)
    assert params["encoder/GFF_0/kernel"].shape == (1, 1, 1024, 64)
    assert params["imnet/dense_0/kernel"].shape == (580, 256)


def test_released_rdn_liif_checkpoint_converts_through_the_safe_reader(tmp_path):
    """The whole path a user's rdn-liif.pth takes: a torch zip with the model, the optimizer
    state and the epoch beside it, read by the allow-listed reader, mapped, checked."""
    entry, sd = released_state_dict()
    rng = np.random.default_rng(0)
    marked = "encoder.RDBs.3.convs.5.conv.0.weight"  # (64, 352, 3, 3)
    sd[marked] = rng.normal(size=sd[marked].shape).astype(np.float32)
    checkpoint = tf.liif_checkpoint(entry["spec"], sd, epoch=1000)
    checkpoint["optimizer"] = {"state": {0: {"step": 3}}, "param_groups": [{"lr": 1e-4}]}
    src = tmp_path / "rdn-liif.pth"
    src.write_bytes(tf.torch_zip_bytes(checkpoint))
    model = load_model(src)
    assert isinstance(model.module.encoder, RDN) and model.module.encoder.n_blocks == 16
    assert model.metadata["source_epoch"] == "1000"
    flat = flat_params(model.params)
    assert sum(v.size for v in flat.values()) == 22_320_835
    assert np.array_equal(flat["encoder/RDB_3/conv_5/kernel"], sd[marked].transpose(2, 3, 1, 0))


def test_rdn_checkpoint_with_a_foreign_entry_is_refused(tmp_path):
    entry, sd = released_state_dict()
    sd["encoder.sub_mean.weight"] = np.zeros((3, 3, 1, 1), np.float32)  # EDSR's, never RDN's
    src = tmp_path / "odd.pth"
    src.write_bytes(tf.torch_zip_bytes(tf.liif_checkpoint(entry["spec"], sd)))
    with pytest.raises(CheckpointError, match="unexpected.*encoder.sub_mean.weight"):
        load_model(src)


# ---------------------------------------------------------------- parity: RDN-A

@pytest.fixture(scope="module")
def rdn_a():
    return load_model(RDN_A_PTH)


@needs_rdn_a
def test_rdn_a_checkpoint_builds_config_a(rdn_a):
    enc = rdn_a.module.encoder
    assert (enc.n_blocks, enc.n_layers, enc.growth, enc.growth0) == (20, 6, 32, 64)
    assert sum(v.size for v in flat_params(rdn_a.params).values()) == MANIFEST["models"]["rdn-a-liif"]["params"]


@needs_rdn_a
def test_rdn_a_feature_map(rdn_a):
    (feat_case,) = MANIFEST["feats"]
    feat = np.asarray(engine.encode(rdn_a, read_rgb01(DEV / feat_case["input"])))[0]
    ref = np.load(SHARED / "golden" / "family" / feat_case["file"])  # (h, w, C)
    assert feat.shape == ref.shape == (40, 24, 64)
    assert np.abs(feat - ref).max() <= FEAT_TOL


def family_cases(model):
    return [c for c in MANIFEST["cases"] if c["model"] == model]


@needs_rdn_a
@pytest.mark.parametrize("case", family_cases("rdn-a-liif"), ids=lambda c: c["clamped"])
def test_rdn_a_outputs(rdn_a, case):
    image = read_rgb01(DEV / case["input"])
    gold = SHARED / "golden" / "family"
    for raw, key in ((True, "raw"), (False, "clamped")):
        out = engine.render(rdn_a, image, case["out_hw"], raw=raw,
                            settings=engine.RenderSettings(precision="float32"))
        assert np.abs(out - np.load(gold / case[key])).max() <= OUT_TOL


@needs_rdn_a
def test_rdn_a_literal_path(rdn_a):
    case = family_cases("rdn-a-liif")[0]
    out = engine.render_literal(rdn_a, read_rgb01(DEV / case["input"]), case["out_hw"], raw=True)
    assert np.abs(out - np.load(SHARED / "golden" / "family" / case["raw"])).max() <= OUT_TOL


# ---------------------------------------------------------------- parity: the tiny family

@pytest.mark.parametrize("name", [n for n in MANIFEST["models"] if n.startswith("tiny-")])
def test_tiny_family_checkpoints(name):
    """Every flag of the original off alone and together, a one-layer MLP, full EDSR, and a
    checkpoint with optimizer state: both decoder paths against the authors' outputs."""
    info = MANIFEST["models"][name]
    model = load_model(FAMILY / info["file"])
    assert model.spec == normalize_spec(info["spec"])
    mean_shift = 2 * (3 * 3 + 3)  # EDSR's sub_mean/add_mean: counted there, dropped here
    assert sum(v.size for v in flat_params(model.params).values()) + mean_shift == info["params"]
    cases = family_cases(name)
    assert cases
    for case in cases:
        image = read_rgb01(DEV / case["input"])
        for raw, key in ((True, "raw"), (False, "clamped")):
            ref = np.load(FAMILY / case[key])
            out = engine.render(model, image, case["out_hw"], raw=raw,
                                settings=engine.RenderSettings(precision="float32"))
            assert np.abs(out - ref).max() <= OUT_TOL, (case[key], "default path")
        literal = engine.render_literal(model, image, case["out_hw"], raw=True)
        assert np.abs(literal - np.load(FAMILY / case["raw"])).max() <= OUT_TOL, case["raw"]


def test_every_tiny_family_file_is_covered():
    on_disk = {p.name for p in FAMILY.glob("tiny-*.pth")}
    assert on_disk == {m["file"] for n, m in MANIFEST["models"].items() if n.startswith("tiny-")}
    assert len(on_disk) == 7


# ---------------------------------------------------------------- tiles

def small_rdn(encoder_cls=RDN):
    """An RDN small enough to tile a 40x24 image many ways (halo 2 + 2*3 + 1 + 1 = 10)."""
    module = LIIF(encoder=encoder_cls(n_blocks=2, n_layers=3, growth=4, growth0=8),
                  imnet=MLP(hidden_list=(16, 16)))
    return LiifModel(spec={}, module=module, params=init_params(module, seed=0))


class RDNWithTooSmallHalo(RDN):
    """Claims one 3x3 convolution fewer than it has: tiles must then differ."""

    @property
    def n_convs(self):
        return RDN.n_convs.fget(self) - 1


@pytest.mark.parametrize("out_hw", [(97, 61), (100, 24), (30, 17)])
def test_rdn_tiles_equal_untiled_bit_for_bit(out_hw):
    model = small_rdn()
    assert model.module.encoder.n_convs == 9
    image = read_rgb01(DEV / "in_coffee_40x24.png")
    settings = engine.RenderSettings(precision="float32")
    whole = engine.render(model, image, out_hw, raw=True, settings=settings)
    for tile in (1, 3, 5, 8):
        tiled = engine.render(model, image, out_hw, raw=True,
                              settings=engine.RenderSettings(precision="float32", tile=tile))
        assert np.array_equal(tiled, whole), tile


def test_a_halo_one_short_breaks_rdn_tiles():
    """The halo is tight: one pixel less and some tiled outputs change."""
    model = small_rdn(RDNWithTooSmallHalo)
    image = read_rgb01(DEV / "in_coffee_40x24.png")
    whole = engine.render(model, image, (97, 61), raw=True,
                          settings=engine.RenderSettings(precision="float32"))
    tiled = engine.render(model, image, (97, 61), raw=True,
                          settings=engine.RenderSettings(precision="float32", tile=5))
    assert not np.array_equal(tiled, whole)


# ---------------------------------------------------------------- memory

def encoder_temp_bytes(encoder, size):
    """Bytes XLA allocates for the masked encoder's intermediates on a size x size crop (its
    own buffer plan for the compiled program, read without running it)."""
    import jax
    import jax.numpy as jnp

    module = LIIF(encoder=encoder, imnet=MLP(hidden_list=(16,)))
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)),
                                                jnp.zeros((1, 4, 1, 2), jnp.int32),
                                                jnp.zeros((1, 4, 1, 2)), jnp.zeros((1, 1, 2))))
    enc_params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes["params"]["encoder"])
    crop = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, size, size, 1), jnp.bool_)

    def encode(p, x, m):
        return module.apply({"params": {"encoder": p}}, x, m, method="encode")

    return jax.jit(encode).lower(enc_params, crop, mask).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("config", ["A", "B"])
def test_stated_encoder_peak_covers_what_xla_allocates(config):
    """The engine's estimate for RDN's activations (area x peak_activation_channels plus
    peak_fixed_bytes) is at least XLA's own buffer plan at two crop sizes, so the automatic
    tile keeps --max-memory. (Peak RSS, measured by benchmarks/encoder_memory.py, is what the
    figures were calibrated on; XLA's plan is its deterministic core.)"""
    encoder = build_model(rdn_spec(RDNconfig=config)).encoder
    for size in (48, 96):
        stated = size * size * 4 * encoder.peak_activation_channels + encoder.peak_fixed_bytes
        assert stated >= encoder_temp_bytes(encoder, size)
    # The blocks' outputs are not all kept for the global fusion: per pixel, less than all D
    # block outputs plus one block's concatenation (what the unrolled form held: 1728 channels
    # for A, 2112 for B; the scanned one 577 and 1164).
    slope = (encoder_temp_bytes(encoder, 96) - encoder_temp_bytes(encoder, 48)) / (4 * (96**2 - 48**2))
    concat = encoder.growth0 + encoder.n_layers * encoder.growth
    assert slope < encoder.n_blocks * encoder.growth0 + concat


def test_automatic_tile_for_rdn_keeps_the_budget():
    model = LiifModel(spec={}, module=build_model(rdn_spec()), params={"imnet": {"dense_0": {
        "kernel": np.zeros((580, 256), np.float32)}}})
    halo = tiling.halo_for(model.module.encoder.n_convs)
    settings = engine.RenderSettings(precision="float32", max_memory=8 * 2**30)
    tile = engine.choose_tile(model, (3000, 4000), settings, (32, 64), 1)
    crop = tiling.crop_length(tile, 10**9, halo)
    assert tiling.bucket(crop) == crop  # the tile fills a bucket exactly
    assert engine.estimate_crop_bytes(model, (crop, crop), (32, 64), 1, "float32") <= 8 * 2**30
    smaller = engine.choose_tile(model, (3000, 4000), engine.RenderSettings(
        precision="float32", max_memory=3 * 2**30), (32, 64), 1)
    assert 8 <= smaller < tile
    # RDN-B's 132-pixel halo: the smallest exact tile is 118 pixels in a 384 crop (~1.5 GB
    # estimated). It fits the 2 GB default; a smaller budget is refused, saying what is needed.
    assert engine.choose_tile(model, (3000, 4000), engine.RenderSettings(
        precision="float32", max_memory=2 * 2**30), (32, 64), 1) == 384 - 2 - 2 * halo == 118
    with pytest.raises(RequestError, match="too small.*needs at least"):
        engine.choose_tile(model, (3000, 4000), engine.RenderSettings(
            precision="float32", max_memory=3 * 2**29), (32, 64), 1)
