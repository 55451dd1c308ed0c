"""`liif-jax train` / `export`: configs, the schedule, init, the threaded loader, the loop,
exact resume, SIGKILL/SIGTERM, data parallelism, validation, logs, and exported weights."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_cli
from liif_jax.configs import TrainConfig, load_config
from liif_jax.errors import CheckpointError, RequestError
from liif_jax.train import checkpoint as ckpt
from liif_jax.train.data import BatchLoader, ImplicitDownsampled
from liif_jax.train.loop import optimizer_lr, train
from liif_jax.train.step import init_params, l1_loss, step_decay_schedule
from liif_jax.weights import flat_params, load_model

CLI = [sys.executable, "-m", "liif_jax"]


def tiny(**changes) -> TrainConfig:
    return dataclasses.replace(load_config("tiny"), **changes)


def same_params(a, b, tol=0.0):
    fa, fb = flat_params(a), flat_params(b)
    assert fa.keys() == fb.keys()
    return max(float(np.abs(fa[k] - fb[k]).max()) for k in fa) <= tol


# ---------------------------------------------------------------- configs, schedule, init


def test_built_in_configs_are_the_papers_and_a_tiny_one():
    paper = load_config("paper")
    assert (paper.batch_size, paper.lr, paper.inp_size, paper.sample_q, paper.total_steps) == \
        (16, 1e-4, 48, 2304, 1_000_000)
    assert paper.lr_decay_steps == (200_000, 400_000, 600_000, 800_000) and paper.lr_decay_factor == 0.5
    assert paper.model["args"]["imnet_spec"]["args"]["hidden_list"] == [256] * 4
    assert load_config("tiny").model["args"]["encoder_spec"]["args"]["n_feats"] == 8
    assert TrainConfig.from_json(paper.to_json()) == paper


def test_config_files_and_their_errors(tmp_path):
    good = tmp_path / "mine.py"
    good.write_text("import dataclasses\nfrom liif_jax.configs import tiny\n"
                    "def get_config():\n    return dataclasses.replace(tiny.get_config(), batch_size=2)\n")
    assert load_config(str(good)).batch_size == 2
    cases = {"nofunc.py": "x = 1\n", "wrong.py": "def get_config():\n    return {}\n",
             "broken.py": "def get_config(:\n", "bad.py": "from liif_jax.configs import tiny\nimport dataclasses\n"
             "def get_config():\n    return dataclasses.replace(tiny.get_config(), batch_size=0)\n"}
    messages = {"nofunc.py": "no get_config", "wrong.py": "must return", "broken.py": "failed to load",
                "bad.py": "batch_size must be"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(RequestError, match=messages[name]):
            load_config(str(tmp_path / name))
    with pytest.raises(RequestError, match="one of paper, rdn, tiny or a .py file"):
        load_config("imagenet")


def test_schedule_halves_where_the_originals_epochs_would():
    cfg = load_config("paper")
    schedule = step_decay_schedule(cfg.lr, cfg.lr_decay_steps, cfg.lr_decay_factor)
    host = optimizer_lr(cfg)
    expected = {0: 1e-4, 199_999: 1e-4, 200_000: 5e-5, 399_999: 5e-5, 400_000: 2.5e-5,
                800_000: 6.25e-6, 999_999: 6.25e-6}
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step
        assert host(step) == pytest.approx(lr, rel=1e-12), step


def test_adam_uses_the_schedule(photos):
    """After 2 updates with boundary 1, the second update moved params by half as much as the
    first would (Adam's first steps have |update| = lr in every coordinate with a gradient)."""
    import optax

    from liif_jax.train.step import make_optimizer

    cfg = tiny(lr=1e-3, lr_decay_steps=(1,), lr_decay_factor=0.5)
    opt = make_optimizer(cfg)
    p = {"w": np.zeros(3, np.float32)}
    state = opt.init(p)
    g = {"w": np.array([1.0, -2.0, 3.0], np.float32)}
    u1, state = opt.update(g, state, p)
    u2, state = opt.update(g, state, p)
    assert np.allclose(np.abs(u1["w"]), 1e-3, rtol=1e-4) and np.allclose(np.abs(u2["w"]), 5e-4, rtol=1e-4)
    # Adam's first step is lr against the gradient's sign, whatever its size.
    assert np.allclose(optax.apply_updates(p, u1)["w"], [-1e-3, 1e-3, -1e-3], rtol=1e-4)


def test_init_is_pytorchs_default_distribution():
    from liif_jax.models import build_model

    module = build_model(load_config("paper").model)
    a, b = init_params(module, 0), init_params(module, 0)
    assert same_params(a, b)  # deterministic per seed
    assert not same_params(a, init_params(module, 1), tol=1e-3)
    flat = flat_params(a)
    for name, bound in [("encoder/head", 1 / np.sqrt(27)), ("encoder/body_0/conv_0", 1 / np.sqrt(576)),
                        ("imnet/dense_0", 1 / np.sqrt(580)), ("imnet/dense_4", 1 / np.sqrt(256))]:
        for part in ("kernel", "bias"):
            v = flat[f"{name}/{part}"]
            assert np.abs(v).max() <= bound, name
            if v.size >= 100:  # uniform on [-bound, bound]: fills it, std bound / sqrt(3)
                assert np.abs(v).max() > 0.95 * bound, name
                assert abs(float(v.std()) - bound / np.sqrt(3)) < 0.05 * bound, name


# ---------------------------------------------------------------- the threaded loader


def test_loader_gives_the_sequential_batches_in_order(photos):
    data = ImplicitDownsampled(photos, inp_size=16, sample_q=64, repeat=3)
    assert len(data) == 15 and data.steps_per_epoch(4) == 3
    with BatchLoader(data, 4, seed=7, start=2, stop=8, threads=3, depth=2) as loader:
        got = list(loader)
    assert [s for s, _ in got] == list(range(2, 8))
    for step, batch in got:
        epoch, items = data.step_items(step, 4, seed=7)
        ref = data.host_batch(items, 7, epoch)
        for x, y in zip(batch, ref):
            np.testing.assert_array_equal(x, y)
    # steps 3..5 are epoch 1: a new order, still every item at most once per epoch
    items = np.concatenate([data.step_items(s, 4, 7)[1] for s in (3, 4, 5)])
    assert len(set(items.tolist())) == 12


def test_loader_process_shares_make_the_global_batch(photos):
    data = ImplicitDownsampled(photos, inp_size=16, sample_q=32)
    whole = list(BatchLoader(data, 4, 0, 0, 1))[0][1]
    parts = [list(BatchLoader(data, 4, 0, 0, 1, process_index=i, process_count=2))[0][1] for i in (0, 1)]
    for field, x in enumerate(whole):
        np.testing.assert_array_equal(x, np.concatenate([parts[0][field], parts[1][field]]))


def test_loader_reports_errors_in_the_consumer(tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "small.png")
    data = ImplicitDownsampled(tmp_path, inp_size=16, sample_q=8, cache=None)
    with pytest.raises(Exception, match="smaller than the largest crop"):
        with BatchLoader(data, 1, 0, 0, 3) as loader:
            list(loader)


# ---------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def straight_run(photos, tmp_path_factory):
    """The reference: 20 uninterrupted steps of the tiny config."""
    wd = tmp_path_factory.mktemp("straight")
    return train(tiny(log_every=5, checkpoint_every=10), photos, wd, steps=20, quiet=True), wd


def test_tiny_config_trains_and_its_loss_falls(photos, tmp_path):
    result = train(tiny(log_every=10), photos, tmp_path, steps=50, quiet=True)
    losses = [loss for _, loss in result.losses]
    assert result.step == 50 and len(losses) == 5 and np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50]
    assert all(r["steps_per_s"] > 0 and r["lr"] == 1e-3 for r in records)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [50]  # checkpoint_every 50


def test_resume_equals_the_uninterrupted_run(photos, tmp_path, straight_run):
    reference, _ = straight_run
    first = train(tiny(log_every=5, checkpoint_every=10), photos, tmp_path, steps=10, quiet=True)
    assert first.step == 10 and not same_params(first.params, reference.params, tol=1e-7)
    second = train(tiny(log_every=5, checkpoint_every=10), photos, tmp_path, steps=20, quiet=True)
    assert second.resumed_from == 10 and second.step == 20
    assert same_params(second.params, reference.params, tol=1e-7)
    assert second.losses == [(s, loss) for s, loss in reference.losses if s > 10]
    again = train(tiny(), photos, tmp_path, steps=20, quiet=True)  # nothing left to do
    assert again.step == 20 and again.losses == []


def test_keeps_the_last_n_and_skips_a_broken_newest(photos, tmp_path, straight_run):
    reference, _ = straight_run
    cfg = tiny(log_every=5, checkpoint_every=2, keep_checkpoints=3)
    train(cfg, photos, tmp_path, steps=12, quiet=True)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [8, 10, 12]
    newest = ckpt.checkpoint_path(tmp_path, 12)
    for f in (newest / "params").rglob("*"):  # e.g. a copy cut short
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(Warning, match="checkpoint step_00000012 is unreadable"):
        resumed = train(cfg, photos, tmp_path, steps=20, quiet=True)
    assert resumed.resumed_from == 10 and same_params(resumed.params, reference.params, tol=1e-7)
    # the broken one was moved aside, not deleted; retention kept the 3 newest good ones
    assert (tmp_path / "skipped-checkpoints" / "step_00000012").is_dir()
    assert "unreadable" in (tmp_path / "skipped-checkpoints" / "step_00000012.why.txt").read_text()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [16, 18, 20]


def test_a_workdir_of_another_model_is_refused(photos, tmp_path):
    train(tiny(), photos, tmp_path, steps=1, quiet=True)
    other = dataclasses.replace(load_config("tiny"),
                                model={**load_config("tiny").model, "args": {
                                    **load_config("tiny").model["args"], "imnet_spec": {
                                        "name": "mlp", "args": {"out_dim": 3, "hidden_list": [8]}}}})
    with pytest.raises(CheckpointError, match="different model"):
        train(other, photos, tmp_path, steps=2, quiet=True)


def test_fine_tuning_starts_from_the_given_weights(photos, tmp_path):
    """--init-from: the first step's loss is the loss of exactly those weights."""
    from liif_jax.train.data import ImplicitDownsampled as Data

    cfg = tiny(log_every=1)
    result = train(cfg, photos, tmp_path, steps=1, init_from=TINY / "tiny-liif.pth", quiet=True)
    start = load_model(TINY / "tiny-liif.pth")
    data = Data.from_config(photos, cfg)
    epoch, items = data.step_items(0, cfg.batch_size, cfg.seed)
    expected = float(l1_loss(start.params, start.module, data.host_batch(items, cfg.seed, epoch)))
    assert result.losses[0][1] == pytest.approx(expected, abs=1e-6)
    _, _, meta = ckpt.latest_checkpoint(tmp_path)
    assert meta["init_from"] == "tiny-liif.pth"


def test_validation_psnr_is_the_eval_protocols(photos, tmp_path):
    from liif_jax.evaluate import evaluate_image
    from liif_jax.weights import LiifModel

    cfg = tiny(val_every=4, val_scales=(2.0, 3.0), val_max_images=2, log_every=4)
    result = train(cfg, photos, tmp_path, steps=4, val_data=photos, quiet=True)
    assert [s for s, _ in result.val] == [4]
    record = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if "val_psnr" in x][0]
    from liif_jax.models import build_model

    m = LiifModel(spec=cfg.model, module=build_model(cfg.model), params=result.params)
    names = sorted(p.name for p in photos.glob("*.png"))[:2]
    for s in (2.0, 3.0):
        hr = [np.asarray(Image.open(photos / n).convert("RGB")) for n in names]
        mean = np.mean([evaluate_image(n, h, s, m).psnr for n, h in zip(names, hr)])
        assert record[f"val_psnr_x{s:g}"] == pytest.approx(mean, abs=1e-9)
    assert record["val_psnr"] == pytest.approx((record["val_psnr_x2"] + record["val_psnr_x3"]) / 2)


def test_tensorboard_events_are_written(photos, tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is in the test extra")
    train(tiny(log_every=2), photos, tmp_path, steps=4, quiet=True)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


TWO_DEVICES = """
import sys, jax, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from liif_jax.configs import load_config
from liif_jax.train.loop import train
from liif_jax.weights import flat_params
assert len(jax.devices()) == 2
cfg = load_config("tiny")
one = train(cfg, sys.argv[1], sys.argv[2] + "/one", steps=3, devices=jax.devices()[:1], quiet=True)
two = train(cfg, sys.argv[1], sys.argv[2] + "/two", steps=3, quiet=True)
a, b = flat_params(one.params), flat_params(two.params)
print("MAXDIFF", max(float(np.abs(a[k] - b[k]).max()) for k in a))
print("LOSSDIFF", max(abs(x[1] - y[1]) for x, y in zip(one.losses, two.losses)))
"""


def test_two_devices_train_like_one(photos, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(photos), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    values = dict(line.split() for line in proc.stdout.splitlines() if line.startswith(("MAXDIFF", "LOSSDIFF")))
    assert float(values["MAXDIFF"]) <= 1e-6 and float(values["LOSSDIFF"]) <= 1e-6, proc.stdout


def test_batch_must_split_over_the_devices(photos, tmp_path):
    with pytest.raises(RequestError, match="does not split over 3 devices"):
        train(tiny(), photos, tmp_path, steps=1, devices=[jax.devices()[0]] * 3, quiet=True)


# ---------------------------------------------------------------- the CLI, kills and export


def _config_file(tmp_path, **changes):
    path = tmp_path / "cfg.py"
    items = ", ".join(f"{k}={v!r}" for k, v in changes.items())
    path.write_text(textwrap.dedent(f"""\
        import dataclasses
        from liif_jax.configs import tiny
        def get_config():
            return dataclasses.replace(tiny.get_config(), {items})
        """))
    return path


def _wait_for(predicate, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_mid_run_then_resume_reaches_the_same_params(photos, tmp_path, straight_run, capsys):
    """Checkpoint every step, SIGKILL at an arbitrary moment (often mid-save), resume: the
    run ends where the uninterrupted one does, bit for bit within 1e-7."""
    reference, _ = straight_run
    cfg = _config_file(tmp_path, checkpoint_every=1, log_every=5, keep_checkpoints=2)
    wd = tmp_path / "run"
    cmd = CLI + ["train", "--config", str(cfg), "--data", str(photos), "--workdir", str(wd), "--steps", "20", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(ckpt.list_checkpoints(wd)) >= 1 and ckpt.list_checkpoints(wd)[-1][0] >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = ckpt.list_checkpoints(wd)[-1][0]
    assert killed_at < 20
    # what a kill in the middle of a save leaves behind: Orbax's temporary folder
    partial = wd / "checkpoints" / f"step_{killed_at + 1:08d}.orbax-checkpoint-tmp-1234567"
    if not list((wd / "checkpoints").glob("*.orbax-checkpoint-tmp*")):
        (partial / "params").mkdir(parents=True)
        (partial / "params" / "manifest.ocdbt").write_bytes(b"partial")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from step {killed_at}" in done.stdout
    assert not list((wd / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    out = tmp_path / "final.safetensors"
    code, stdout, err = run_cli(capsys, "export", wd, out)
    assert code == 0 and "after 20 training steps" in stdout, err
    assert same_params(load_model(out).params, reference.params, tol=1e-7)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_saves_a_checkpoint_and_stops(photos, tmp_path, sig):
    cfg = _config_file(tmp_path, checkpoint_every=1000, log_every=1)
    wd = tmp_path / "run"
    cmd = CLI + ["train", "--config", str(cfg), "--data", str(photos), "--workdir", str(wd), "--steps", "100000", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = wd / "log.jsonl"
    _wait_for(lambda: log.exists() and log.read_text().count("\n") >= 3, proc)  # training
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    steps = [s for s, _ in ckpt.list_checkpoints(wd)]
    assert len(steps) == 1 and f"stopped by {sig.name} at step {steps[0]}" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_export_loads_in_upscale_and_carries_provenance(photos, tmp_path, straight_run, capsys):
    reference, wd = straight_run
    out = tmp_path / "trained.safetensors"
    code, stdout, err = run_cli(capsys, "export", wd, out)
    assert code == 0 and "after 20 training steps" in stdout, err
    model = load_model(out)
    assert same_params(model.params, reference.params) and model.metadata["trained_steps"] == "20"
    up = tmp_path / "up.png"
    code, _, err = run_cli(capsys, "upscale", photos / "p0.png", up, "--scale", "2", "--weights", out, "-q")
    assert code == 0, err
    assert Image.open(up).size == (224, 160)
    # a single checkpoint file works too
    step, one = ckpt.list_checkpoints(wd)[0]
    code, stdout, err = run_cli(capsys, "export", one, tmp_path / "b.safetensors")
    assert code == 0 and f"after {step} training steps" in stdout, err
    # Errors are one line, through the real entry point (the export command's process-level
    # check: no traceback ever).
    bad = subprocess.run(CLI + ["export", str(tmp_path), str(tmp_path / "c.safetensors")], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.startswith("liif-jax: error: no checkpoints") and bad.stderr.count("\n") == 1
    assert not (tmp_path / "c.safetensors").exists()


def test_fine_tune_of_the_bundled_weights_keeps_their_license(photos, tmp_path, capsys):
    cfg = _config_file(tmp_path, model=load_config("paper").model, inp_size=16, sample_q=16,
                       batch_size=1, checkpoint_every=1)
    wd = tmp_path / "ft"
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--data", photos, "--workdir", wd,
                           "--steps", "1", "--init-from", "bundled", "-q")
    assert code == 0, err
    out = tmp_path / "ft.safetensors"
    assert run_cli(capsys, "export", wd, out)[0] == 0
    model = load_model(out)
    assert "BSD" in model.metadata["license"] and model.metadata["init_from"] == "bundled"


@pytest.mark.parametrize("args, message", [
    (["--data", "nowhere"], "--data must be a folder"),
    (["--init-from", "missing.safetensors"], "--init-from: no such weight file"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--config", "paper"], "smaller than the largest crop (192 pixels)"),
])
def test_train_cli_errors_are_one_line(photos, tmp_path, args, message, capsys):
    base = {"--config": "tiny", "--data": str(photos), "--workdir": str(tmp_path / "wd")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = [x for kv in base.items() for x in kv] + [a for a in args if a not in base and a not in base.values()]
    code, _, err = run_cli(capsys, "train", *argv, "-q")
    assert code != 0 and message in err, err
    assert err.count("\n") == 1 and err.startswith("liif-jax: error: ") and "Traceback" not in err


TWO_PROCESSES = """
import sys, jax, numpy as np
jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
jax.config.update("jax_default_matmul_precision", "highest")
from liif_jax.configs import load_config
from liif_jax.train.loop import train
from liif_jax.weights import flat_params
r = train(load_config("tiny"), sys.argv[3], sys.argv[4], steps=int(sys.argv[5]), quiet=True)
import os; os.makedirs(sys.argv[4], exist_ok=True)  # only process 0 creates its workdir
np.savez(sys.argv[4] + "/params.npz", **flat_params(r.params))
print("START", r.resumed_from or 0)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_and_resume_from_process_0(photos, tmp_path):
    """jax.distributed with 2 CPU processes (1 device each): each builds half of every batch,
    the gradient is all-reduced, and the result is the single-process run's. Each process has
    its own workdir; on resume only process 0's has the checkpoint, and it is broadcast."""
    def run(steps):
        port = str(_free_port())
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, port, str(i), str(photos),
                                   str(tmp_path / f"wd{i}"), str(steps)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-2000:]
        return [out for out, _ in outs]

    run(3)
    assert ckpt.list_checkpoints(tmp_path / "wd0") and not ckpt.list_checkpoints(tmp_path / "wd1")
    outs = run(5)
    assert all("START 3" in out for out in outs), outs
    single = train(tiny(), photos, tmp_path / "single", steps=5, quiet=True)
    for i in (0, 1):
        got = dict(np.load(tmp_path / f"wd{i}" / "params.npz"))
        assert same_params(got, single.params, tol=1e-6)


def test_the_step_compiles_once_for_every_scale_and_epoch(photos):
    """Crops of every scale give batches of one shape (LR inp_size, sample_q queries), so the
    step is traced once for a whole run."""
    import chex

    from liif_jax.models import build_model
    from liif_jax.train.step import make_optimizer, train_step_fn

    cfg = tiny()
    module, opt = build_model(cfg.model), make_optimizer(cfg)
    step = jax.jit(chex.assert_max_traces(train_step_fn(module, opt), n=1))
    params = init_params(module, 0)
    state = opt.init(params)
    data = ImplicitDownsampled.from_config(photos, cfg)
    with BatchLoader(data, cfg.batch_size, cfg.seed, 0, 6) as loader:  # 6 epochs of 1 step
        for _, batch in loader:
            params, state, loss = step(params, state, batch)
    assert np.isfinite(float(loss))
    with pytest.raises(AssertionError):  # a differently shaped batch would retrace: the check bites
        smaller = ImplicitDownsampled(photos, inp_size=12, sample_q=256)
        step(params, state, smaller.host_batch(list(range(4)), 0, 0))


def test_resuming_with_a_changed_config_says_so(photos, tmp_path):
    train(tiny(), photos, tmp_path, steps=2, quiet=True)
    lines = []
    train(tiny(log_every=7), photos, tmp_path, steps=3, quiet=True, echo=lines.append)
    assert any("differs from the checkpoint's in log_every (10 -> 7)" in line for line in lines), lines
    lines = []
    train(tiny(log_every=7), photos, tmp_path, steps=4, quiet=True, echo=lines.append)
    assert not any("differs" in line for line in lines)


def test_an_unreadable_training_image_is_named(tmp_path):
    from liif_jax.errors import ImageError

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="cannot read training image .*broken.png"):
        ImplicitDownsampled(tmp_path).preload()
