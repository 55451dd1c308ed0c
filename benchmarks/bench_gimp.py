"""GIMP filter timing benchmark (needs root and the GIMP chroot of .ci/gimp/build_chroot.sh):
prints figures, asserts nothing.

    sudo .venv/bin/python benchmarks/bench_gimp.py [--size 512] [--scale 2] [--runs 3]

Runs python-fu-liif-upscale in a real headless GIMP 3 on a SIZExSIZE RGB image, --runs times
in one GIMP session, with the plug-in configured as 'liif-jax gimp install' does (warm server
on). Each call is timed from the procedure's start to its return; the client's timings log
($LIIF_JAX_TIMINGS) gives the compute the worker reported, and the difference is the
overhead (start-up, transfer, GIMP's buffers). The first call is cold: it starts the server
(JAX import, weight load, compilation). The server is stopped afterwards.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("LIIF_GIMP_CHROOT", "/var/tmp/liif-gimp-chroot"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    subprocess.run(["bash", str(REPO / ".ci/gimp/build_chroot.sh")], check=True,
                   env=dict(os.environ, LIIF_GIMP_INSTALL_SRC=str(REPO)), stdout=subprocess.DEVNULL)
    work = ROOT / "liif-work" / "liif-bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work.chmod(0o777)
    src = Image.open(REPO / "tests/fixtures/dev/in_astronaut_48x48.png").convert("RGB")
    src.resize((args.size, args.size), Image.BICUBIC).save(work / "in.png")
    plugins = Path(tempfile.mkdtemp()) / "liif_upscale"
    plugins.mkdir()
    shutil.copy(REPO / "gimp_plugin/liif_upscale/liif_upscale.py", plugins)
    shutil.copy(REPO / "gimp_plugin/liif_bridge_client.py", plugins)
    (plugins / "liif_jax_gimp.json").write_text(json.dumps({"python": "/opt/liif-venv/bin/python",
                                                            "start_server": True}))
    env = dict(os.environ, LIIF_BENCH_INPUT="/liif-work/liif-bench/in.png", LIIF_BENCH_RUNS=str(args.runs),
               LIIF_BENCH_SCALE=str(args.scale), LIIF_BENCH_REPORT="/liif-work/liif-bench/times.json",
               LIIF_JAX_TIMINGS="/liif-work/liif-bench/timings.jsonl")
    try:
        proc = subprocess.run(["bash", str(REPO / ".ci/gimp/run_gimp_batch.sh"),
                               str(REPO / "benchmarks/gimp_timing_driver.py"), str(plugins)],
                              env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        times = json.loads((work / "times.json").read_text())
        calls = [json.loads(line) for line in (work / "timings.jsonl").read_text().splitlines()]
        for i, (t, call) in enumerate(zip(times, calls)):
            print(json.dumps({"call": "cold (starts the server)" if i == 0 else f"warm #{i}",
                              "size": f"{args.size}x{args.size} x{args.scale:g}",
                              "procedure_s": round(t, 3), "worker_compute_s": call["compute_s"],
                              "overhead_s": round(t - call["compute_s"], 3), "channel": call["channel"]}))
    finally:
        subprocess.run(["chroot", str(ROOT), "pkill", "-f", "liif_jax serve"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
