"""Hostile checkpoints and specs: refused with a one-line CheckpointError, in bounded memory.

Memory is measured with tracemalloc's peak (it counts NumPy's buffers, the pickle module's
memo and byte strings, inflated zip data), which is deterministic, unlike RSS or time.
Everything a load path imports is imported before measuring.
"""

import json
import struct
import tracemalloc

import numpy as np
import pytest

import torch_format as tf
from conftest import DEV, TINY
from convert_weights import load_checkpoint
from convert_weights.torch_pickle import ALLOWED_GLOBALS
from liif_jax.convert import convert_file, model_from_checkpoint_bytes
from liif_jax.errors import CheckpointError, UnsafeCheckpointError
from liif_jax.models import build_model  # noqa: F401 (imported before any measurement)
from liif_jax.weights import flat_params, load_model

MB = 1 << 20
# What any refused or tiny load here may allocate at its peak. Today's code allocated 256 MB
# to 1.2 GB on these files.
BOUND = 24 * MB


def peak_of(fn, *args, **kwargs):
    """(peak bytes allocated while ``fn`` ran, its CheckpointError or None)."""
    tracemalloc.start()
    error = None
    try:
        fn(*args, **kwargs)
    except CheckpointError as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


@pytest.fixture(scope="module")
def tiny():
    """(spec, state dict, reference flat params) of the tiny checkpoint; also warms every
    import and cache a load touches, so peaks measure the load alone."""
    ckpt = load_checkpoint((TINY / "tiny-liif.pth").read_bytes())
    spec = {k: v for k, v in ckpt["model"].items() if k != "sd"}
    ref = flat_params(load_model(TINY / "tiny-liif.pth").params)
    load_model(TINY / "tiny-liif-legacy.pth")
    return spec, dict(ckpt["model"]["sd"]), ref


def _with(tiny, **replace):
    spec, sd, _ = tiny
    sd = dict(sd)
    sd.update({k.replace("__", "."): v for k, v in replace.items()})
    return tf.liif_checkpoint(spec, sd)


# ---------------------------------------------------------------- item 1: memory bombs

# encoder.head.0.weight is (8, 3, 3, 3) in the tiny model.
BOMBS = {
    # The file: a 1-element storage viewed as 16384 x 16384 through zero strides.
    "zero-stride": tf.Tensor(np.zeros(1), size=(16384, 16384), stride=(0, 0)),
    # Overlapping strides: 8192 x 8192 elements viewed over a 16,383-element storage.
    "overlapping": tf.Tensor(np.zeros(16383), size=(8192, 8192), stride=(1, 1)),
}


@pytest.mark.parametrize("writer", [tf.torch_zip_bytes, tf.torch_legacy_bytes])
@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_views_larger_than_their_storage_are_refused_before_allocating(tmp_path, tiny, writer, bomb):
    data = writer(_with(tiny, encoder__head__0__weight=BOMBS[bomb]))
    assert len(data) < 200_000
    src = tmp_path / "bomb.pth"
    src.write_bytes(data)
    for load in (lambda: model_from_checkpoint_bytes(data, "bomb.pth"), lambda: load_model(src),
                 lambda: convert_file(src, tmp_path / "out.safetensors"), lambda: load_checkpoint(data)):
        peak, error = peak_of(load)
        assert peak < BOUND, f"{peak / MB:.0f} MB"
        assert error is not None and "\n" not in str(error)
        assert "storage" in str(error)
    assert not (tmp_path / "out.safetensors").exists()


def test_the_commands_refuse_a_bomb_in_bounded_memory(tmp_path, tiny, capsys):
    """convert and upscale --weights (serve --weights and train --init-from load through the
    same load_model) in process: exit 1, one line, bounded peak, nothing written."""
    from liif_jax.cli import main

    src = tmp_path / "bomb.pth"
    src.write_bytes(tf.torch_zip_bytes(_with(tiny, encoder__head__0__weight=BOMBS["zero-stride"])))
    image = DEV / "in_coffee_40x24.png"
    for argv in (["convert", str(src), str(tmp_path / "o.safetensors")],
                 ["upscale", str(image), str(tmp_path / "o.png"), "--scale", "2", "--weights", str(src)]):
        main(["convert", str(TINY / "tiny-liif.pth"), str(tmp_path / "warm.safetensors")])  # imports
        capsys.readouterr()
        tracemalloc.start()
        try:
            rc = main(argv)
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        err = capsys.readouterr().err
        assert peak < BOUND, f"{argv[0]}: {peak / MB:.0f} MB"
        assert rc == 1 and len(err.strip().splitlines()) == 1 and "zero stride" in err, err
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.png").exists()


def test_big_compressed_storages_are_read_only_as_far_as_needed(tmp_path, tiny):
    """A needed tensor at the start of a 256 MiB deflated storage, and an unneeded 256 MiB one
    in the optimizer state: a ~0.5 MB file that loads exactly, reading a few hundred bytes."""
    spec, sd, ref = tiny
    sd = dict(sd)
    sd["encoder.head.0.weight"] = tf.Tensor(sd["encoder.head.0.weight"], storage_numel=64 * MB)
    ckpt = tf.liif_checkpoint(spec, sd)
    ckpt["optimizer"]["state"] = {"exp_avg": tf.Tensor(np.zeros(4), size=(64 * MB,), stride=(1,),
                                                       storage_numel=64 * MB)}
    data = tf.torch_zip_bytes(ckpt)
    assert len(data) < 1 * MB
    src = tmp_path / "big.pth"
    src.write_bytes(data)
    peak, error = peak_of(load_model, src)
    assert error is None, error
    assert peak < BOUND, f"{peak / MB:.0f} MB"
    model = load_model(src)
    ours = flat_params(model.params)
    assert all(np.array_equal(ours[k], ref[k]) for k in ref)


def test_a_storage_shorter_than_the_pickle_claims_is_refused_unread():
    """The zip's directory says how long each entry is: a storage claiming more elements
    than its entry holds is refused without inflating it."""
    with pytest.raises(CheckpointError, match="storage '0' is truncated"):
        load_checkpoint(_tensor_stream(storage=np.arange(2, dtype="<f4").tobytes()))


def test_pickle_structures_that_amplify_are_bounded(tiny):
    """A shared list referenced twice at each of 22 levels: 4 million paths, 23 objects."""
    items = tf.op.EMPTY_LIST + tf.op.put(0)
    for level in range(1, 23):
        items += tf.op.EMPTY_LIST + tf.op.put(level) + tf.op.get(level - 1) + tf.op.APPEND \
            + tf.op.get(level - 1) + tf.op.APPEND
    data = tf.zip_with_pickle(tf.op.PROTO2 + items + tf.op.STOP)
    result = []
    peak, error = peak_of(lambda: result.append(load_checkpoint(data)))
    assert peak < BOUND, f"{peak / MB:.0f} MB"
    assert error is None and result[0][0] is result[0][1]  # sharing kept, not copied


@pytest.mark.parametrize("stream", [
    # A memo index 16 M: the C unpickler would size its memo (and zero it) to match.
    tf.op.PROTO2 + tf.op.EMPTY_LIST + tf.op.put(16 * MB) + tf.op.STOP,
    # A byte string claiming 512 MiB in an 11-byte stream: allocated before it is read.
    tf.op.PROTO2 + tf.op.bytes8(512 * MB, b"abc") + tf.op.STOP,
    # A frame ending inside a BINBYTES8 length (found by the fuzzer): the C unpickler drops
    # the frame's rest and takes the length from the next bytes, 'J\0\0\0\0.' = 1.2 GB.
    tf.op.PROTO2 + b"\x95" + struct.pack("<Q", 16) + tf.op.int(0) + tf.op.int(0)
    + tf.op.bytes8(0) + tf.op.int(0) + tf.op.STOP,
])
def test_pickle_claims_are_checked_before_the_unpickler_allocates(stream):
    peak, error = peak_of(load_checkpoint, tf.zip_with_pickle(stream))
    assert peak < BOUND, f"{peak / MB:.0f} MB"
    assert error is not None and "\n" not in str(error)


def test_protocol_4_frames_still_read():
    """What a real pickler writes at protocol 4 (frames aligned to opcodes) reads as before."""
    import pickle

    value = {"epoch": 3, "names": [f"layer.{i}" for i in range(20000)]}
    assert load_checkpoint(tf.zip_with_pickle(pickle.dumps(value, protocol=4))) == value


FOUR_FLOATS = np.arange(4, dtype="<f4").tobytes()


def _tensor_stream(*, build_on=None, state=b"", storage=FOUR_FLOATS):
    """A pickle rebuilding one 4-element float tensor; ``build_on`` = 'storage type',
    'rebuild function' or 'tensor' adds a BUILD opcode with ``state`` on that object."""
    o = tf.op
    storage_type = o.glob("torch", "FloatStorage")
    if build_on == "storage type":
        storage_type += state + o.BUILD
    rebuild = o.glob("torch._utils", "_rebuild_tensor_v2")
    if build_on == "rebuild function":
        rebuild += state + o.BUILD
    pid = o.tuple(o.text("storage"), storage_type, o.text("0"), o.text("cpu"), o.int(4))
    args = o.tuple(pid + o.BINPERSID, o.int(0), o.tuple(o.int(4)), o.tuple(o.int(1)), o.NEWFALSE,
                   o.NONE)
    tensor = rebuild + args + o.REDUCE
    if build_on == "tensor":
        tensor += state + o.BUILD
    return tf.zip_with_pickle(o.PROTO2 + tensor + o.STOP, {"0": storage})


def _dict_state(**items):
    o = tf.op
    return o.EMPTY_DICT + b"".join(o.text(k) + v + o.SETITEM for k, v in items.items())


@pytest.mark.parametrize("build_on,state", [
    ("storage type", _dict_state(name=tf.op.text("ByteStorage"))),
    ("rebuild function", _dict_state(x=tf.op.int(1))),
    # (dict state, slot state): slot state is applied with setattr
    ("rebuild function", tf.op.tuple(tf.op.NONE, _dict_state(__defaults__=tf.op.tuple(tf.op.int(7))))),
    ("tensor", _dict_state(size=tf.op.tuple(tf.op.int(16384), tf.op.int(16384)))),
])
def test_build_cannot_modify_the_allow_list_or_a_checked_tensor(tiny, build_on, state):
    before = {key: (repr(vars(value)) if hasattr(value, "__dict__") else None,
                    getattr(value, "name", None), getattr(value, "__defaults__", None))
              for key, value in ALLOWED_GLOBALS.items()}
    assert np.array_equal(load_checkpoint(_tensor_stream()), np.arange(4, dtype=np.float32))
    with pytest.raises(UnsafeCheckpointError, match="tries to modify"):
        load_checkpoint(_tensor_stream(build_on=build_on, state=state))
    after = {key: (repr(vars(value)) if hasattr(value, "__dict__") else None,
                   getattr(value, "name", None), getattr(value, "__defaults__", None))
             for key, value in ALLOWED_GLOBALS.items()}
    assert after == before
    # Later loads in the same process read exactly as before.
    assert np.array_equal(load_checkpoint(_tensor_stream()), np.arange(4, dtype=np.float32))
    _, _, ref = tiny
    again = flat_params(load_model(TINY / "tiny-liif.pth").params)
    assert all(np.array_equal(again[k], ref[k]) for k in ref)


# ---------------------------------------------------------------- item 2: huge specs

def _huge_spec(n_resblocks=20000, n_feats=64):
    return {"name": "liif", "args": {
        "encoder_spec": {"name": "edsr-baseline",
                         "args": {"n_resblocks": n_resblocks, "n_feats": n_feats, "no_upsampling": True}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256, 256]}}}}


def _weights_file(spec, tensors=None) -> bytes:
    from safetensors.numpy import save

    # One real parameter, never none: safetensors 0.4.3 (the lowest we admit) writes a broken
    # JSON header for an empty file.
    tensors = tensors or {"imnet/dense_0/bias": np.zeros(256, np.float32)}
    return save(tensors, metadata={"format": "liif-jax-weights", "format_version": "1",
                                   "spec": json.dumps(spec)})


def _train_checkpoint(tmp_path, spec):
    from safetensors.numpy import save

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "step_00000001.safetensors").write_bytes(save(
        {"params['imnet']['dense_0']['bias']": np.zeros(256, np.float32)},
        metadata={"format": "liif-jax-train-checkpoint", "format_version": "1", "step": "1",
                  "spec": json.dumps(spec)}))
    return tmp_path / "run"


@pytest.mark.parametrize("kind", ["pth", "safetensors", "export"])
def test_a_huge_spec_is_refused_up_front_naming_the_limit(tmp_path, kind):
    """The issue's 500-byte checkpoint: n_resblocks=20000 and no weights (today: traced for
    79 s and 1.6 GB before 'missing parameters')."""
    from liif_jax.train.checkpoint import export_weights

    spec = _huge_spec()
    if kind == "pth":
        data = tf.torch_zip_bytes(tf.liif_checkpoint(spec, {}))
        assert len(data) < 1000
        src = tmp_path / "huge.pth"
        src.write_bytes(data)
        load = lambda: load_model(src)  # noqa: E731
    elif kind == "safetensors":
        src = tmp_path / "huge.safetensors"
        src.write_bytes(_weights_file(spec))
        load = lambda: load_model(src)  # noqa: E731
    else:
        run = _train_checkpoint(tmp_path, spec)
        load = lambda: export_weights(run, tmp_path / "out.safetensors")  # noqa: E731
    peak, error = peak_of(load)
    assert error is not None and "n_resblocks=20000" in str(error) and "limit of 1,000" in str(error)
    assert peak < BOUND, f"{peak / MB:.0f} MB"
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("kind", ["pth", "safetensors", "export"])
def test_a_big_spec_within_the_limits_is_compared_without_tracing(tmp_path, kind, monkeypatch):
    """1,000 blocks (74 M parameters, within the limits) and no weights: 'missing' at once,
    and no model is traced to learn what is missing."""
    import jax

    from liif_jax.train.checkpoint import export_weights

    def no_tracing(*args, **kwargs):
        raise AssertionError("a model was traced")

    monkeypatch.setattr(jax, "eval_shape", no_tracing)
    spec = _huge_spec(n_resblocks=1000)
    if kind == "pth":
        src = tmp_path / "big.pth"
        src.write_bytes(tf.torch_zip_bytes(tf.liif_checkpoint(spec, {})))
        load = lambda: load_model(src)  # noqa: E731
    elif kind == "safetensors":
        src = tmp_path / "big.safetensors"
        src.write_bytes(_weights_file(spec))
        load = lambda: load_model(src)  # noqa: E731
    else:
        run = _train_checkpoint(tmp_path, spec)
        load = lambda: export_weights(run, tmp_path / "out.safetensors")  # noqa: E731
    peak, error = peak_of(load)
    assert error is not None and ("missing" in str(error) or "lacks" in str(error)), error
    assert peak < BOUND, f"{peak / MB:.0f} MB"


def test_the_total_parameter_limit(tmp_path):
    """Each size within its own limit, the whole over 250 M parameters."""
    src = tmp_path / "wide.pth"
    src.write_bytes(tf.torch_zip_bytes(tf.liif_checkpoint(_huge_spec(n_resblocks=100, n_feats=2048), {})))
    f = 2048
    convs = (3 * 9 * f + f) + (100 * 2 + 1) * (9 * f * f + f)
    mlp = (9 * f + 4) * 256 + 256 + 3 * (256 * 256 + 256) + 256 * 3 + 3
    with pytest.raises(CheckpointError, match=f"describes {convs + mlp:,} parameters, over "
                                              f"liif-jax's limit of 250,000,000"):
        load_model(src)


@pytest.mark.parametrize("bad,named", [
    ({"n_feats": 10 ** 5000}, "n_feats=an integer of"),
    ({"scale": 10 ** 5000}, "not plain numbers"),
    ({"rgb_range": [[[[[[[[1]]]]]]]] * 100000}, "characters long"),
])
def test_odd_spec_values_are_one_line_errors(tmp_path, bad, named):
    spec = _huge_spec(n_resblocks=1)
    spec["args"]["encoder_spec"]["args"].update(bad)
    src = tmp_path / "odd.pth"
    src.write_bytes(tf.torch_zip_bytes(tf.liif_checkpoint(spec, {})))
    with pytest.raises(CheckpointError) as err:
        load_model(src)
    assert named in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 300
