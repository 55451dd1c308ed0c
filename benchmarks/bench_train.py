"""Training benchmark: prints figures, asserts nothing. Every ratio is measured in one run.

    python benchmarks/bench_train.py                      # paper and tiny configs
    python benchmarks/bench_train.py --configs tiny --steps 200

Per config, on the scikit-image sample photos (astronaut, chelsea, coffee, rocket; all large
enough for the paper's 192-pixel crops):
- host loader throughput: batches/s of ``BatchLoader`` with 1 thread and with the config's
  thread count (how fast the host can feed the device);
- the jitted training step alone on a prepared batch: steps/s after compilation (median of
  3 timed runs of --steps steps each) and the compile time;
- the whole loop, ``liif_jax.train.loop.train`` with the threaded loader, logging and one
  checkpoint at the end: steps/s from the end of the first (compiling) step, as its log
  reports.
Devices: all of JAX's default backend (print says which).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def photo_folder(root: Path) -> Path:
    import skimage.data
    from PIL import Image

    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(skimage.data, name)()).save(root / f"{name}.png")
    return root


def loader_rate(data, config, threads: int, n: int) -> float:
    from liif_jax.train.data import BatchLoader

    t = time.perf_counter()
    with BatchLoader(data, config.batch_size, config.seed, 0, n, threads=threads, depth=4) as loader:
        for _ in loader:
            pass
    return n / (time.perf_counter() - t)


def step_rate(config, data, steps: int):
    import jax

    from liif_jax.models import build_model
    from liif_jax.train.step import init_params, make_optimizer, make_train_step

    module = build_model(config.model)
    optimizer = make_optimizer(config)
    params = init_params(module, 0)
    state = optimizer.init(params)
    epoch, items = data.step_items(0, config.batch_size, config.seed)
    batch = jax.device_put(data.host_batch(items, config.seed, epoch))
    step = make_train_step(module, optimizer)
    t = time.perf_counter()
    params, state, loss = step(params, state, batch)
    loss.block_until_ready()
    compile_s = time.perf_counter() - t
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(steps):
            params, state, loss = step(params, state, batch)
        loss.block_until_ready()
        rates.append(steps / (time.perf_counter() - t))
    return statistics.median(rates), compile_s


def main():
    import jax

    from liif_jax.configs import load_config
    from liif_jax.models import build_model
    from liif_jax.train.data import ImplicitDownsampled
    from liif_jax.train.loop import train
    from liif_jax.train.step import init_params

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="paper,tiny")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 paper, 200 tiny)")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")  # what the tests and parity use
    print(f"devices: {jax.devices()}")
    with tempfile.TemporaryDirectory() as tmp:
        photos = photo_folder(Path(tmp))
        for name in args.configs.split(","):
            config = load_config(name)
            steps = args.steps or (10 if name == "paper" else 200)
            data = ImplicitDownsampled.from_config(photos, config)
            data.preload()
            n_params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(
                jax.eval_shape(lambda: init_params(build_model(config.model), 0))))
            print(f"\n== config {name}: {n_params:,} parameters, batch {config.batch_size}, "
                  f"{config.inp_size}x{config.inp_size} LR crops, {config.sample_q} queries each")
            n_load = max(8, min(steps, 50))
            one = loader_rate(data, config, 1, n_load)
            many = loader_rate(data, config, config.loader_threads, n_load)
            print(f"loader: {one:.1f} batches/s on 1 thread, {many:.1f} on {config.loader_threads} "
                  f"({many / one:.2f}x)")
            rate, compile_s = step_rate(config, data, steps)
            print(f"jitted step alone: {rate:.3f} steps/s ({rate * config.batch_size:.1f} crops/s); "
                  f"first call (compile) {compile_s:.1f} s")
            run_cfg = dataclasses.replace(config, log_every=steps + 1, checkpoint_every=10 ** 9,
                                          val_every=10 ** 9)
            lines = []
            t = time.perf_counter()
            train(run_cfg, photos, Path(tmp) / f"wd-{name}", steps=steps + 1, quiet=True, echo=lines.append)
            total = time.perf_counter() - t
            loop_rate = [ln for ln in lines if "steps/s" in ln][-1].split()[-2]
            print(f"train loop (loader + step + logs + final checkpoint): {loop_rate} steps/s; "
                  f"{steps + 1} steps took {total:.1f} s wall including startup and compile; "
                  f"loop / step-alone = {float(loop_rate) / rate:.2f}")


if __name__ == "__main__":
    main()
