"""The torch-free converter: both torch formats, the allow-list, mapping, refusals, output."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import torch_format as tf
from conftest import AUTHORS_PTH, REPO, TINY
from convert_weights import load_checkpoint
from liif_jax.convert import convert_file
from liif_jax.errors import CheckpointError, UnsafeCheckpointError
from liif_jax.weights import (AUTHORS_CHECKPOINT_SHA256, bundled_weights_path, flat_params,
                              load_model)


@pytest.fixture(scope="module")
def tiny_checkpoint():
    return load_checkpoint((TINY / "tiny-liif.pth").read_bytes())


def tiny_state_dict(tiny_checkpoint):
    return dict(tiny_checkpoint["model"]["sd"])


def tiny_spec(tiny_checkpoint):
    return {k: v for k, v in tiny_checkpoint["model"].items() if k != "sd"}


def test_zip_and_legacy_formats_read_identically():
    zipped = load_checkpoint((TINY / "tiny-liif.pth").read_bytes())
    legacy = load_checkpoint((TINY / "tiny-liif-legacy.pth").read_bytes())
    assert zipped["model"]["args"] == legacy["model"]["args"]
    assert zipped["epoch"] == legacy["epoch"] == 1
    sd0, sd1 = zipped["model"]["sd"], legacy["model"]["sd"]
    assert list(sd0) == list(sd1) and len(sd0) == 22
    for key in sd0:
        assert sd0[key].dtype == np.float32
        assert np.array_equal(sd0[key], sd1[key])
    assert sd0["encoder.head.0.weight"].shape == (8, 3, 3, 3)


def test_layouts_are_transposed_for_flax(tiny_checkpoint):
    model = load_model(TINY / "tiny-liif.pth")
    sd = tiny_state_dict(tiny_checkpoint)
    params = flat_params(model.params)
    # conv OIHW -> HWIO
    assert np.array_equal(params["encoder/head/kernel"], sd["encoder.head.0.weight"].transpose(2, 3, 1, 0))
    assert np.array_equal(params["encoder/body_1/conv_1/kernel"],
                          sd["encoder.body.1.body.2.weight"].transpose(2, 3, 1, 0))
    assert np.array_equal(params["encoder/body_conv/bias"], sd["encoder.body.2.bias"])
    # Linear (out, in) -> (in, out)
    assert np.array_equal(params["imnet/dense_0/kernel"], sd["imnet.layers.0.weight"].T)
    assert np.array_equal(params["imnet/dense_2/kernel"], sd["imnet.layers.4.weight"].T)
    assert params["imnet/dense_0/kernel"].shape == (8 * 9 + 4, 16)


@pytest.mark.parametrize("writer", [tf.torch_zip_bytes, tf.torch_legacy_bytes])
def test_crafted_checkpoint_round_trips(tmp_path, tiny_checkpoint, writer):
    ckpt = tf.liif_checkpoint(tiny_spec(tiny_checkpoint), tiny_state_dict(tiny_checkpoint))
    src = tmp_path / "crafted.pth"
    src.write_bytes(writer(ckpt))
    ours = flat_params(load_model(src).params)
    ref = flat_params(load_model(TINY / "tiny-liif.pth").params)
    assert ours.keys() == ref.keys()
    assert all(np.array_equal(ours[k], ref[k]) for k in ref)


def test_converted_file_is_self_describing_safetensors(tmp_path):
    dst = tmp_path / "tiny.safetensors"
    model, notes = convert_file(TINY / "tiny-liif.pth", dst)
    assert any("sub_mean" in n and "add_mean" in n for n in notes)
    data = dst.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    meta = header["__metadata__"]
    assert meta["format"] == "liif-jax-weights" and meta["format_version"] == "1"
    spec = json.loads(meta["spec"])
    assert spec["args"]["encoder_spec"]["args"]["n_feats"] == 8
    assert spec["args"]["encoder_spec"]["args"]["n_resblocks"] == 2
    assert spec["args"]["local_ensemble"] is True  # defaults filled in
    import hashlib

    assert meta["source_sha256"] == hashlib.sha256((TINY / "tiny-liif.pth").read_bytes()).hexdigest()
    assert meta["license"].startswith("unknown")
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")
    assert b"\x80\x02" not in data[:16]  # not a pickle
    again = load_model(dst)
    assert again.spec == model.spec
    assert oct(dst.stat().st_mode & 0o777) != oct(0o600)


def test_bundled_weights_carry_the_bsd_notice():
    model = load_model()
    assert model.metadata["source_sha256"] == AUTHORS_CHECKPOINT_SHA256
    assert "BSD 3-Clause License" in model.metadata["license"]
    assert "Yinbo Chen" in model.metadata["license"]
    assert model.spec["args"]["imnet_spec"]["args"]["hidden_list"] == [256, 256, 256, 256]
    assert sum(v.size for v in flat_params(model.params).values()) == 1_567_299


@pytest.mark.skipif(not AUTHORS_PTH.exists(), reason=f"skipped: the authors' checkpoint is not at {AUTHORS_PTH} (../shared absent)")
def test_bundled_file_equals_a_fresh_conversion(tmp_path):
    dst = tmp_path / "fresh.safetensors"
    fresh, notes = convert_file(AUTHORS_PTH, dst)
    bundled = load_model(bundled_weights_path())
    assert fresh.spec == bundled.spec
    a, b = flat_params(fresh.params), flat_params(bundled.params)
    assert a.keys() == b.keys() and len(a) == 78
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert fresh.metadata == bundled.metadata


# ---------------------------------------------------------------- malicious checkpoints

class _System:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class _Eval:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (eval, (f"open({str(self.sentinel)!r}, 'w').close()",))


def _evil_checkpoint(tiny_checkpoint, payload):
    ckpt = tf.liif_checkpoint(tiny_spec(tiny_checkpoint), tiny_state_dict(tiny_checkpoint))
    ckpt["epoch"] = payload  # nested deep inside an otherwise valid checkpoint
    return ckpt


@pytest.mark.parametrize("writer", [tf.torch_zip_bytes, tf.torch_legacy_bytes])
@pytest.mark.parametrize("payload,global_name", [(_System, "system'"), (_Eval, "eval'")])
def test_code_running_pickles_are_refused(tmp_path, tiny_checkpoint, writer, payload, global_name):
    sentinel = tmp_path / "SENTINEL"
    src = tmp_path / "evil.pth"
    src.write_bytes(writer(_evil_checkpoint(tiny_checkpoint, payload(sentinel))))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(src.read_bytes())
    assert global_name in str(err.value) and "refusing" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        convert_file(src, tmp_path / "out.safetensors")
    assert not sentinel.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_importing_module_is_refused_in_a_fresh_process(tmp_path, tiny_checkpoint):
    """A global naming an importable module whose import has a side effect: the converter
    must refuse it by name, without importing it."""
    sentinel = tmp_path / "SENTINEL"
    (tmp_path / "liif_evil_module.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\ndef payload(*a):\n    return 0\n")
    ckpt = _evil_checkpoint(tiny_checkpoint, tf.Tensor(np.zeros(1)))
    # The stand-in rebuild function renamed to the evil module's: reduce calls it.
    data = tf.torch_zip_bytes(ckpt, extra_renames={(tf.HERE, "_rebuild_tensor_v2"): ("liif_evil_module", "payload")})
    src = tmp_path / "evil.pth"
    src.write_bytes(data)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    proc = subprocess.run([sys.executable, "-m", "convert_weights", str(src), str(tmp_path / "o.safetensors")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "liif_evil_module.payload" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not sentinel.exists()
    assert not (tmp_path / "o.safetensors").exists()
    # Control: the same bytes through a plain unpickler do run the module's code, so the
    # assertions above are not vacuous.
    control = ("import pickle, zipfile, sys; u = pickle.Unpickler(zipfile.ZipFile(sys.argv[1]).open('archive/data.pkl'));"
               " u.persistent_load = lambda pid: None; u.load()")
    subprocess.run([sys.executable, "-c", control, str(src)], env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert sentinel.exists()


# ---------------------------------------------------------------- refusals and damage

def _write(tmp_path, ckpt, writer=tf.torch_zip_bytes):
    src = tmp_path / "c.pth"
    src.write_bytes(writer(ckpt))
    return src


def test_wrong_shape_is_refused(tmp_path, tiny_checkpoint):
    sd = tiny_state_dict(tiny_checkpoint)
    sd["imnet.layers.2.weight"] = np.zeros((16, 17), np.float32)
    with pytest.raises(CheckpointError, match=r"imnet/dense_1/kernel has shape \(17, 16\)"):
        load_model(_write(tmp_path, tf.liif_checkpoint(tiny_spec(tiny_checkpoint), sd)))


def test_missing_key_is_refused(tmp_path, tiny_checkpoint):
    sd = tiny_state_dict(tiny_checkpoint)
    del sd["encoder.body.0.body.2.bias"]
    with pytest.raises(CheckpointError, match="missing 1 parameter.*encoder/body_0/conv_1/bias"):
        load_model(_write(tmp_path, tf.liif_checkpoint(tiny_spec(tiny_checkpoint), sd)))


def test_unexpected_key_is_refused(tmp_path, tiny_checkpoint):
    sd = tiny_state_dict(tiny_checkpoint)
    sd["encoder.tail.0.weight"] = np.zeros((3, 8, 3, 3), np.float32)
    with pytest.raises(CheckpointError, match="unexpected.*encoder.tail.0.weight"):
        load_model(_write(tmp_path, tf.liif_checkpoint(tiny_spec(tiny_checkpoint), sd)))


@pytest.mark.parametrize("spec,named", [
    ({"name": "liif", "args": {"encoder_spec": {"name": "rcan", "args": {"no_upsampling": True}},
                               "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256]}}}},
     "encoder 'rcan'"),
    ({"name": "metasr", "args": {"encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True}}}},
     "model 'metasr'"),
    ({"name": "edsr-baseline", "args": {}}, "model 'edsr-baseline'"),
    ({"name": "liif", "args": {"encoder_spec": {"name": "edsr-baseline", "args": {}},
                               "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}}}},
     "upsampler"),
])
def test_other_architectures_are_refused_naming_what_is_supported(tmp_path, tiny_checkpoint, spec, named):
    src = _write(tmp_path, tf.liif_checkpoint(spec, tiny_state_dict(tiny_checkpoint)))
    with pytest.raises(CheckpointError) as err:
        load_model(src)
    assert named in str(err.value)
    assert "supported: model 'liif' with encoder 'edsr-baseline', 'edsr' or 'rdn'" in str(err.value)


def test_full_edsr_encoder_spec_is_supported(tiny_checkpoint, tmp_path):
    spec = {"name": "liif", "args": {
        "encoder_spec": {"name": "edsr", "args": {"n_resblocks": 2, "n_feats": 8, "no_upsampling": True}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}}}
    model = load_model(_write(tmp_path, tf.liif_checkpoint(spec, tiny_state_dict(tiny_checkpoint))))
    assert model.spec["args"]["encoder_spec"]["args"]["res_scale"] == 0.1
    assert model.module.encoder.res_scale == pytest.approx(0.1)


def test_plain_state_dict_without_spec_is_refused(tmp_path, tiny_checkpoint):
    src = tmp_path / "sd.pth"
    src.write_bytes(tf.torch_zip_bytes(tiny_state_dict(tiny_checkpoint)))
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_model(src)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path, tiny_checkpoint):
    sd = tiny_state_dict(tiny_checkpoint)
    sd["encoder.head.0.bias"] = tf.Tensor(np.zeros(8), size=(8,), stride=(1000,))
    with pytest.raises(CheckpointError, match="reaches past its storage"):
        load_model(_write(tmp_path, tf.liif_checkpoint(tiny_spec(tiny_checkpoint), sd)))


@pytest.mark.parametrize("name", ["tiny-liif.pth", "tiny-liif-legacy.pth"])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_checkpoints_are_refused(tmp_path, name, keep):
    data = (TINY / name).read_bytes()
    src = tmp_path / name
    src.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as err:
        load_model(src)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"hello world, not a checkpoint", b"PK\x03\x04garbage",
                                     b"\x80\x02garbage"])
def test_non_checkpoints_are_refused(tmp_path, content):
    src = tmp_path / "x.pth"
    src.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_model(src)


def test_safetensors_with_a_spec_that_does_not_match_is_refused(tmp_path):
    from safetensors.numpy import load, save

    data = (bundled_weights_path()).read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    meta = header["__metadata__"]
    spec = json.loads(meta["spec"])
    spec["args"]["imnet_spec"]["args"]["hidden_list"] = [128, 256, 256, 256]
    meta["spec"] = json.dumps(spec)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(save(load(data), metadata=meta))
    with pytest.raises(CheckpointError, match="imnet/dense_0/(kernel|bias) has shape"):
        load_model(bad)


def test_python_m_convert_weights(tmp_path):
    dst = tmp_path / "t.safetensors"
    proc = subprocess.run([sys.executable, "-m", "convert_weights", str(TINY / "tiny-liif-legacy.pth"), str(dst)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "4,699 parameters" in proc.stdout  # 4,723 minus the 24 unused MeanShift values
    assert "dropped 4 entries" in proc.stderr
    assert load_model(dst).spec["args"]["encoder_spec"]["args"]["n_feats"] == 8
