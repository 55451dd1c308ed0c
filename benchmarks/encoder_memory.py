"""Measure an encoder's peak activation memory per crop pixel, to calibrate (or check) its
``peak_activation_channels``, which the engine's memory estimate (``--max-memory``) uses.
Prints figures, asserts nothing.

    python benchmarks/encoder_memory.py --model rdn-b --sizes 96,128,192
    python benchmarks/encoder_memory.py --weights ../shared/golden/family/rdn-a-liif.pth

For each crop size S (each in a fresh process, so the peak is that size's own) the masked
encoder -- exactly what the engine runs per tile, in float32 -- is compiled, then run once.
The peak RSS growth during the run, over S*S*4 bytes, is the number of float32 channels per
pixel live at the encoder's peak. The slope between sizes removes whatever does not scale with
the area (XLA's constant scratch). The stated ``peak_activation_channels`` is printed beside
it; it should be at or above the measured slope.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SPECS = {  # models that need no file: random weights of the released architectures
    "rdn-b": {"name": "rdn", "args": {"no_upsampling": True, "RDNconfig": "B"}},
    "rdn-a": {"name": "rdn", "args": {"no_upsampling": True, "RDNconfig": "A"}},
    "edsr-baseline": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
}


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(args, size: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from liif_jax.models import build_model
    from liif_jax.train.step import init_params

    if args.weights:
        from liif_jax.weights import load_model

        model = load_model(args.weights)
        module, params = model.module, model.params
    else:
        spec = {"name": "liif", "args": {"encoder_spec": SPECS[args.model],
                                         "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256] * 4}}}}
        module = build_model(spec)
        params = init_params(module, seed=0)

    @jax.jit
    def encode(enc_params, crop, mask):
        with jax.default_matmul_precision("highest"):
            return module.apply({"params": {"encoder": enc_params}}, crop, mask, method="encode")

    crop = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32))
    # The engine's mask: the real image is a little smaller than the bucket.
    mask = jnp.asarray((np.arange(size)[:, None] < size - 3) & (np.arange(size)[None, :] < size - 3))
    mask = mask[None, :, :, None]
    compiled = encode.lower(params["encoder"], crop, mask).compile()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_before = current_rss_bytes()
    t = time.perf_counter()
    compiled(params["encoder"], crop, mask).block_until_ready()
    seconds = time.perf_counter() - t
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "run_peak_growth_bytes": peak_after - rss_before,
            "peak_rose": peak_after > peak_before, "seconds": round(seconds, 2),
            "stated_channels": module.encoder.peak_activation_channels}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rdn-b", choices=sorted(SPECS))
    parser.add_argument("--weights", help="a weight file instead of --model's random weights")
    parser.add_argument("--sizes", default="96,128,192", help="crop sides, comma-separated")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)  # internal: one size
    args = parser.parse_args()
    if args.size:
        print(json.dumps(measure(args, args.size)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--model", args.model, "--size", str(size)]
        if args.weights:
            cmd += ["--weights", args.weights]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"size {size}: FAILED\n{proc.stderr[-2000:]}")
            return
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["channels_per_pixel"] = round(row["run_peak_growth_bytes"] / (4 * size * size), 1)
        rows.append(row)
        print(json.dumps(row))
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        slope = (b["run_peak_growth_bytes"] - a["run_peak_growth_bytes"]) / (4 * (b["size"] ** 2 - a["size"] ** 2))
        print(f"slope {a['size']}->{b['size']}: {slope:.1f} float32 channels per pixel "
              f"(stated peak_activation_channels: {rows[0]['stated_channels']})")


if __name__ == "__main__":
    main()
