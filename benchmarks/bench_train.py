"""Training benchmark: prints figures, asserts nothing. Every ratio is measured in one run.

    python benchmarks/bench_train.py                      # paper and tiny configs
    python benchmarks/bench_train.py --configs tiny --steps 200
    python benchmarks/bench_train.py --configs paper --loader-only   # threaded vs grain loader

Per config, on the scikit-image sample photos (astronaut, chelsea, coffee, rocket; all large
enough for the paper's 192-pixel crops):
- host loader throughput: batches/s of the threaded ``BatchLoader`` with 1 thread and with the
  config's thread count, and of the grain pipeline (``train.pipeline.GrainLoader``, the
  default) with the same threads in-process and with worker processes (one per core beyond
  two, when the host has them) -- how fast the host can feed the device, each loader timed
  in turn in the same run, back to back, ``--pairs`` times (the median of the pairs'
  ratios); both with the thread count training uses (``loader_threads``, at most one per
  core);
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


def grain_rate(data, config, threads: int, workers: int, n: int, steady: bool = False) -> float:
    """Batches/s of the grain pipeline over ``n`` batches; ``steady``: from the first batch on
    (worker processes take seconds to start: each imports JAX)."""
    from liif_jax.train.pipeline import GrainLoader

    t = time.perf_counter()
    with GrainLoader(data, config.batch_size, config.seed, 0, n, threads=threads, depth=4,
                     workers=workers) as loader:
        for i, _ in enumerate(loader):
            if i == 0 and steady:
                t = time.perf_counter()
    return (n - 1 if steady else n) / (time.perf_counter() - t)


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
    from liif_jax.train.pipeline import auto_workers, host_threads, usable_cores
    from liif_jax.train.step import init_params

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="paper,tiny")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 paper, 200 tiny)")
    parser.add_argument("--loader-batches", type=int, default=None, help="batches per loader timing")
    parser.add_argument("--loader-only", action="store_true", help="only the loader figures")
    parser.add_argument("--pairs", type=int, default=5, help="back-to-back threaded/grain timings (median)")
    parser.add_argument("--grain-workers", type=int, default=None,
                        help="grain worker processes to time (default: the automatic count)")
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
                jax.eval_shape(lambda: init_params(build_model(config.model), 0))))  # noqa: B023 (called at once)
            print(f"\n== config {name}: {n_params:,} parameters, batch {config.batch_size}, "
                  f"{config.inp_size}x{config.inp_size} LR crops, {config.sample_q} queries each")
            n_load = args.loader_batches or max(8, min(steps, 50))
            # what training runs: the config's thread count, at most one per core
            threads = host_threads(config.loader_threads)
            one = loader_rate(data, config, 1, n_load)
            many = loader_rate(data, config, threads, n_load)
            print(f"loader: {one:.1f} batches/s on 1 thread, {many:.1f} on {threads} "
                  f"({many / one:.2f}x; config {config.loader_threads}, {usable_cores()} cores)")
            try:
                import grain  # noqa: F401
            except ImportError:
                print("grain: not installed (pip install grain); skipped")
            else:
                # Alternate the two loaders so a busy shared host slows both alike.
                threads_runs, grain_runs = [], []
                for _ in range(args.pairs):
                    threads_runs.append(loader_rate(data, config, threads, n_load))
                    grain_runs.append(grain_rate(data, config, threads, 0, n_load))
                t_med, g_med = statistics.median(threads_runs), statistics.median(grain_runs)
                # each pair ran back to back, so its ratio is free of the host's drift between pairs
                ratios = sorted(g / t for g, t in zip(grain_runs, threads_runs))
                print(f"grain, {threads} threads in-process: {g_med:.1f} batches/s vs the threaded "
                      f"loader's {t_med:.1f} (grain / threads = {statistics.median(ratios):.2f}, median "
                      f"of {len(ratios)} back-to-back pairs, range {ratios[0]:.2f}-{ratios[-1]:.2f})")
                workers = auto_workers(-1 if args.grain_workers is None else args.grain_workers)
                if workers:
                    rate = grain_rate(data, config, threads, workers, 4 * n_load, steady=True)
                    print(f"grain, {workers} worker processes: {rate:.1f} batches/s once started "
                          f"({rate / one:.2f}x the one-thread loader)")
                else:
                    print("grain worker processes: none by default on this host (2 cores or fewer beyond "
                          "the trainer; --grain-workers N times them anyway)")
                # What a 16-core GPU host would get, from this run's one-core figure: grain's
                # automatic count there is 8 worker processes (cores - 2, at most 8).
                print(f"projection, not a measurement: 8 worker processes on a 16-core host feed at most "
                      f"about {8 * one:.0f} batches/s (8 x this run's one-thread rate, if it scales linearly)")
            if args.loader_only:
                continue
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
