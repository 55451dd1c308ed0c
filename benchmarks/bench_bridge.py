"""Bridge overhead benchmark: prints figures, asserts nothing.

    python benchmarks/bench_bridge.py [--size 512] [--scale 2]

Times one upscale through the GIMP plug-ins' client (gimp_plugin/liif_bridge_client.py), as
the plug-in runs it: cold (no server yet: it starts ``liif-jax serve``, which imports JAX,
loads the weights and compiles), then warm (the server is up), then through a one-off
``liif-jax bridge`` subprocess. Overhead = wall time minus the compute the worker reports.
Uses a private socket path, and stops the server it started.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "gimp_plugin"))
import liif_bridge_client as bridge  # noqa: E402


def timed(client, pixels, scale):
    h, w = pixels.shape[:2]
    start = time.perf_counter()
    result = client.upscale(w, h, "RGBA", "u8", pixels.tobytes(), scale=scale)
    compute, kind = result.compute_s, result.channel
    wall = time.perf_counter() - start
    return {"channel": kind, "wall_s": round(wall, 3), "compute_s": round(compute, 3),
            "overhead_s": round(wall - compute, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scale", type=float, default=2.0)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="liif-bench-")
    os.environ["LIIF_JAX_SOCKET"] = os.path.join(folder, "run", "worker.sock")
    pixels = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    client = bridge.BridgeClient(sys.executable)
    try:
        print(json.dumps({"case": f"{args.size}x{args.size} x{args.scale:g} cold (starts the server)",
                          **timed(client, pixels, args.scale)}))
        for i in range(2):
            print(json.dumps({"case": f"{args.size}x{args.size} x{args.scale:g} warm #{i + 1}",
                              **timed(client, pixels, args.scale)}))
        oneoff = bridge.BridgeClient(sys.executable, start_server=False)
        os.environ["LIIF_JAX_SOCKET"] = os.path.join(folder, "none", "worker.sock")
        print(json.dumps({"case": f"{args.size}x{args.size} x{args.scale:g} one-off subprocess",
                          **timed(oneoff, pixels, args.scale)}))
    finally:
        subprocess.run(["pkill", "-f", "liif_jax serve"], check=False)


if __name__ == "__main__":
    main()
