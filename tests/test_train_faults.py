"""Training under faults (issue 12): every fault keeps all progress up to the last good
checkpoint. Unreadable, non-finite and other-model checkpoints are skipped (and moved aside,
saying why), retention counts only good checkpoints, non-finite params are never saved, a loader
failure saves before stopping, and a 0.1.x workdir is read."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from liif_jax.configs import load_config
from liif_jax.errors import CheckpointError, ImageError
from liif_jax.train import checkpoint as ckpt
from liif_jax.train.loop import train
from liif_jax.weights import flat_params


def tiny(**changes):
    base = dict(log_every=2, checkpoint_every=2, keep_checkpoints=2)
    return dataclasses.replace(load_config("tiny"), **{**base, **changes})


@pytest.fixture(scope="module")
def straight(photos, tmp_path_factory):
    """Uninterrupted runs to compare resumed ones with: step -> params."""
    runs = {}
    for steps in (6, 8):
        runs[steps] = train(tiny(), photos, tmp_path_factory.mktemp(f"straight{steps}"), steps=steps, quiet=True).params
    return runs


def steps_of(workdir):
    return [s for s, _ in ckpt.list_checkpoints(workdir)]


def close(a, b, tol=1e-7) -> bool:
    fa, fb = flat_params(a), flat_params(b)
    return fa.keys() == fb.keys() and max(float(np.abs(fa[k] - fb[k]).max()) for k in fa) <= tol


def cut_arrays(step_dir):
    """Truncate every array file of a checkpoint, as a copy cut short would."""
    for f in step_dir.rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])


def test_all_checkpoints_unreadable_restart_and_keep_the_new_ones(photos, tmp_path, straight):
    """Before: the run restarted from 0 and retention deleted each new checkpoint right after
    writing it (it kept the highest, unreadable steps)."""
    train(tiny(), photos, tmp_path, steps=8, quiet=True)
    assert steps_of(tmp_path) == [6, 8]
    for _, path in ckpt.list_checkpoints(tmp_path):
        cut_arrays(path)
    with pytest.warns(Warning) as warned:
        result = train(tiny(), photos, tmp_path, steps=6, quiet=True)
    messages = [str(w.message) for w in warned]
    assert any("step_00000008 is unreadable" in m for m in messages), messages
    assert any("step_00000006 is unreadable" in m for m in messages), messages
    assert result.resumed_from is None and result.step == 6
    assert steps_of(tmp_path) == [4, 6]  # the new ones stay
    assert close(result.params, straight[6])
    aside = sorted(p.name for p in (tmp_path / "skipped-checkpoints").iterdir())
    assert aside == ["step_00000006", "step_00000006.why.txt", "step_00000008", "step_00000008.why.txt"]
    again = train(tiny(), photos, tmp_path, steps=8, quiet=True)
    assert again.resumed_from == 6 and close(again.params, straight[8])


def test_an_unreadable_checkpoint_is_one_warning_line_in_the_cli(photos, tmp_path):
    """A failed Orbax restore closes its event loop while TensorStore's other reads are still in
    flight; each then failed to wake the closed loop and Python printed the error as a
    traceback: 72 of them on stderr for one cut-short tiny checkpoint."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    train(tiny(), photos, tmp_path, steps=4, quiet=True)
    cut_arrays(ckpt.checkpoint_path(tmp_path, 4))
    proc = subprocess.run([sys.executable, "-m", "liif_jax", "train", "--config", "tiny", "--data", str(photos),
                           "--workdir", str(tmp_path), "--steps", "6", "-q"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[-2000:]
    warned = [ln for ln in proc.stderr.splitlines() if "step_00000004" in ln]
    assert len(warned) == 1 and "is unreadable" in warned[0], proc.stderr
    assert warned[0].endswith("; skipped and moved to skipped-checkpoints/"), warned[0]
    assert steps_of(tmp_path)[-1] == 6


def _write_checkpoint(workdir, step, params, opt_state, meta_changes=None):
    """A checkpoint written as the loop writes one, but with whatever content the test wants
    (the loop itself refuses to save NaN)."""
    import orbax.checkpoint as ocp

    meta = json.loads(json.dumps(ckpt.latest_checkpoint(workdir)[2]))
    meta.update(meta_changes or {}, step=step)
    manager = ckpt._manager(ckpt.checkpoint_dir(workdir), async_save=False)
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        data=ocp.args.JsonSave({"step": step}), meta=ocp.args.JsonSave(meta)), force=True)
    manager.close()


def _newest(workdir, config):
    import jax

    from liif_jax.models import build_model
    from liif_jax.models.spec import spec_to_json
    from liif_jax.train.step import init_params, make_optimizer

    module = build_model(config.model)
    template = jax.eval_shape(lambda: init_params(module, 0))
    return ckpt.find_latest(workdir, spec_json=spec_to_json(ckpt_spec(config)), params_template=template,
                            opt_template=jax.eval_shape(make_optimizer(config).init, template)).restored


def ckpt_spec(config):
    from liif_jax.models import normalize_spec

    return normalize_spec(config.model)


def test_a_nan_checkpoint_is_skipped_and_never_pushes_good_ones_out(photos, tmp_path, straight):
    """Before: a checkpoint with NaN weights was resumed silently, and its NaN successors then
    pushed the good checkpoints out."""
    train(tiny(), photos, tmp_path, steps=6, quiet=True)
    good = _newest(tmp_path, tiny())
    poisoned = {**good.params}
    poisoned["imnet"] = {**poisoned["imnet"], "dense_0": {**poisoned["imnet"]["dense_0"],
                                                          "bias": good.params["imnet"]["dense_0"]["bias"] * np.nan}}
    _write_checkpoint(tmp_path, 7, poisoned, good.opt_state)
    assert steps_of(tmp_path) == [4, 6, 7]
    with pytest.warns(Warning, match=r"step_00000007 holds non-finite values \(NaN/Inf\) in \['imnet'\]\['dense_0'\]\['bias'\]"):
        result = train(tiny(), photos, tmp_path, steps=8, quiet=True)
    assert result.resumed_from == 6 and close(result.params, straight[8])
    assert steps_of(tmp_path) == [6, 8]
    assert (tmp_path / "skipped-checkpoints" / "step_00000007").is_dir()


def test_a_newest_checkpoint_of_another_model_falls_back_to_a_good_older_one(photos, tmp_path, straight):
    """Before: a changed spec in the newest checkpoint was a hard error although good older
    ones existed. Now it is skipped; a workdir holding only another model is still refused."""
    train(tiny(), photos, tmp_path, steps=6, quiet=True)
    good = _newest(tmp_path, tiny())
    other = json.loads(good.meta["spec"])
    other["args"]["imnet_spec"]["args"]["hidden_list"] = [8]
    _write_checkpoint(tmp_path, 7, good.params, good.opt_state, {"spec": json.dumps(other)})
    with pytest.warns(Warning, match="step_00000007 is of a different model"):
        result = train(tiny(), photos, tmp_path, steps=8, quiet=True)
    assert result.resumed_from == 6 and close(result.params, straight[8])
    # all of another model: refused, and nothing is moved
    only_other = tmp_path / "other"
    shutil.copytree(tmp_path / "skipped-checkpoints" / "step_00000007", only_other / "checkpoints" / "step_00000007")
    with pytest.raises(CheckpointError, match="holds a run of a different model; use a new --workdir"):
        train(tiny(), photos, only_other, steps=8, quiet=True)
    assert steps_of(only_other) == [7]


def _poison_after(monkeypatch, n_good: int):
    """The training step returns NaN params from update ``n_good + 1`` on."""
    import liif_jax.train.step as step_module

    real = step_module.make_train_step
    calls = [0]

    def make(*args, **kwargs):
        step = real(*args, **kwargs)

        def poisoned(params, opt_state, batch):
            params, opt_state, loss = step(params, opt_state, batch)
            calls[0] += 1
            if calls[0] > n_good:
                import jax

                params = jax.tree_util.tree_map(lambda x: x * np.float32(np.nan), params)
            return params, opt_state, loss

        return poisoned

    monkeypatch.setattr(step_module, "make_train_step", make)


def test_non_finite_params_are_never_saved_and_stop_the_run(photos, tmp_path, monkeypatch, capsys):
    from liif_jax.cli import main

    _poison_after(monkeypatch, 5)  # steps 1..5 good, step 6 NaN: the save of step 6 refuses
    code = main(["train", "--config", str(_config_file(tmp_path, keep_checkpoints=3)), "--data", str(photos),
                 "--workdir", str(tmp_path / "wd"), "--steps", "10", "-q"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.count("\n") == 1 and "step 6: the training state became non-finite" in err
    assert "newest good checkpoint is step_00000004" in err
    assert steps_of(tmp_path / "wd") == [2, 4]
    assert not (tmp_path / "wd" / "skipped-checkpoints").exists()


def _config_file(tmp_path, **changes):
    items = ", ".join(f"{k}={v!r}" for k, v in {**dict(log_every=2, checkpoint_every=2, keep_checkpoints=2),
                                                 **changes}.items())
    path = tmp_path / "cfg.py"
    path.write_text("import dataclasses\nfrom liif_jax.configs import tiny\n"
                    f"def get_config():\n    return dataclasses.replace(tiny.get_config(), {items})\n")
    return path


@pytest.mark.parametrize("loader", ["grain", "threads"])
def test_a_loader_failure_saves_the_steps_trained_then_stops(photos, tmp_path, monkeypatch, capsys, straight, loader):
    """Before: a loader failure mid-run exited without saving. The tiny config has one step per
    epoch, so epoch 3 is step 4's batch: steps 1-3 are trained, then the run saves step 3 (no
    regular checkpoint was due) and stops with one line."""
    from liif_jax.cli import main
    from liif_jax.train.data import ImplicitDownsampled

    if loader == "grain":
        pytest.importorskip("grain", reason="grain is not installed (pip install grain)")
    real = ImplicitDownsampled.item

    def failing(self, index, seed, epoch):
        if epoch == 3:
            raise ImageError(f"cannot read training image p{index % 5}.png: disk gone")
        return real(self, index, seed, epoch)

    monkeypatch.setattr(ImplicitDownsampled, "item", failing)
    cfg = _config_file(tmp_path, checkpoint_every=100, loader=loader, loader_workers=0)
    argv = ["train", "--config", str(cfg), "--data", str(photos), "--workdir", str(tmp_path / "wd"), "--steps", "6", "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the input pipeline failed after step 3" in err, err
    assert "disk gone" in err and "checkpoint of step 3 kept" in err
    assert steps_of(tmp_path / "wd") == [3]
    monkeypatch.setattr(ImplicitDownsampled, "item", real)
    result = train(tiny(checkpoint_every=100, loader=loader), photos, tmp_path / "wd", steps=6, quiet=True)
    assert result.resumed_from == 3 and close(result.params, straight[6])


def _write_legacy(path, step, params, opt_state, meta):
    """A checkpoint as liif-jax 0.1.x wrote it (one safetensors file)."""
    import jax
    from safetensors.numpy import save

    named = {}
    for prefix, tree in (("params", params), ("opt_state", opt_state)):
        for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            named[prefix + jax.tree_util.keystr(keys)] = np.ascontiguousarray(leaf)
    text = {k: str(v) for k, v in meta.items() if k in ("spec", "config", "init_from", "license")}
    text.update(format="liif-jax-train-checkpoint", format_version="1", step=str(step))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(save(named, metadata=text))


def test_a_workdir_of_0_1_is_read_and_continued_in_orbax_format(photos, tmp_path, straight):
    train(tiny(), photos, tmp_path / "new", steps=6, quiet=True)
    good = _newest(tmp_path / "new", tiny())
    old = tmp_path / "old"
    legacy = old / "checkpoints" / "step_00000006.safetensors"
    _write_legacy(legacy, 6, good.params, good.opt_state, good.meta)
    lines = []
    result = train(tiny(), photos, old, steps=8, quiet=True, echo=lines.append)
    assert result.resumed_from == 6 and close(result.params, straight[8])
    assert any("liif-jax 0.1.x format" in line for line in lines), lines
    assert steps_of(old) == [8] and legacy.exists()
    # export reads both kinds
    from liif_jax.weights import load_model

    ckpt.export_weights(legacy, tmp_path / "a.safetensors")
    assert close(load_model(tmp_path / "a.safetensors").params, good.params, tol=0)
    step, path = ckpt.export_weights(old, tmp_path / "b.safetensors")
    assert step == 8 and path.name == "step_00000008"
    assert close(load_model(tmp_path / "b.safetensors").params, straight[8])


def test_export_skips_an_unreadable_newest_and_refuses_a_lone_broken_one(photos, tmp_path, straight):
    train(tiny(), photos, tmp_path, steps=8, quiet=True)
    cut_arrays(ckpt.checkpoint_path(tmp_path, 8))
    with pytest.warns(Warning, match="step_00000008 is unreadable"):
        step, _ = ckpt.export_weights(tmp_path, tmp_path / "w.safetensors")
    assert step == 6
    with pytest.raises(CheckpointError, match="step_00000008 is unreadable"):
        ckpt.export_weights(ckpt.checkpoint_path(tmp_path, 8), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_checkpoints_are_orbax_steps_any_jax_user_can_open(photos, tmp_path):
    """The format is plain Orbax: a CheckpointManager with no liif-jax code reads it."""
    import orbax.checkpoint as ocp

    train(tiny(), photos, tmp_path, steps=2, quiet=True)
    manager = ocp.CheckpointManager((tmp_path / "checkpoints").resolve(), item_names=ckpt.ITEMS,
                                    options=ocp.CheckpointManagerOptions(step_prefix="step",
                                                                         step_format_fixed_length=8,
                                                                         read_only=True))
    assert manager.all_steps() == [2]
    got = manager.restore(2, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                                     meta=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
    assert got["meta"]["format"] == "liif-jax-train-checkpoint" and got["meta"]["step"] == 2
    assert got["data"]["step"] == 2
    assert got["params"]["imnet"]["dense_0"]["kernel"].dtype == np.float32
    manager.close()
