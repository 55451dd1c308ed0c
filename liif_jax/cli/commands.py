"""One ``run_*`` function per command of ``liif-jax``: each checks its arguments (messages
name the flags), calls the library, shows progress and prints the result. What is done with
the images is the library's (``liif_jax.folders``, ``liif_jax.evaluate``, ``liif_jax.convert``,
...); errors are turned into messages and exit codes by ``liif_jax.cli.run``."""

from __future__ import annotations

import os
import sys

import numpy as np

from liif_jax.cli.output import PROG, Progress
from liif_jax.errors import CheckpointError, RequestError, one_line


def upscale_request(args):
    """The ``UpscaleRequest`` of ``upscale``'s options (the size given exactly one way)."""
    from liif_jax.cli.parser import size_fields
    from liif_jax.folders import UpscaleRequest

    return UpscaleRequest(**size_fields(args.scale, args.size, args.width, args.height),
                          region=args.region, tile=args.tile, max_memory=args.max_memory,
                          precision=args.precision, max_pixels=args.max_pixels, quality=args.quality)


def run_upscale(args) -> int:
    from pathlib import Path

    from liif_jax.folders import upscale_file
    from liif_jax.imageio import check_output_path, read_input
    from liif_jax.weights import load_model

    request = upscale_request(args)
    if Path(args.input).is_dir():
        return run_upscale_folder(args, request)
    if args.distributed or args.format:
        raise RequestError("--distributed and --format are for folders (IN is a folder)")
    # --overwrite asks nothing more of a single file: OUT is always replaced (atomically).
    check_output_path(args.output, args.input)
    image = read_input(args.input)  # a bad input is reported before the model loads
    total = request.planned_pixels(image[0].pixels.shape[:2])
    model = load_model(args.weights)
    progress = Progress(total, os.path.basename(args.output), args.quiet)
    try:
        in_hw, out_hw = upscale_file(args.input, args.output, request, model,
                                     progress.for_image(0, total), image=image)
    finally:
        progress.close()
    # The result line is the command's output (stdout, like convert's): --quiet hides only the bar.
    if args.region is None:
        print(f"{args.output}: {in_hw[1]}x{in_hw[0]} -> {out_hw[1]}x{out_hw[0]}")
    else:
        x, y, w, h = args.region
        print(f"{args.output}: region {w:g}x{h:g} at {x:g},{y:g} of {in_hw[1]}x{in_hw[0]} "
              f"-> {out_hw[1]}x{out_hw[0]}")
    return 0


def run_upscale_folder(args, request) -> int:
    from liif_jax.folders import pending_work, plan_folder, upscale_folder
    from liif_jax.weights import load_model

    # Every check on the whole set (OUT, collisions) comes before any process takes its share.
    jobs = plan_folder(args.input, args.output, args.format)
    prefix = ""
    if args.distributed:
        jobs, prefix = _distributed_share(args, jobs)
    work = pending_work(jobs, request, overwrite=args.overwrite)
    model = load_model(args.weights) if work.todo else None
    total = work.total_pixels
    progress = Progress(total, f"{prefix}{len(work.todo)} images", args.quiet)
    try:
        result = upscale_folder(work, request, model, progress=progress.for_image(0, total),
                                on_error=lambda failure: progress.write(f"{PROG}: error: {failure}"))
    finally:
        progress.close()
    # The summary is the command's result (stdout, as a single file's result line); the
    # errors above it went to stderr.
    print(f"{prefix}{result.upscaled} upscaled, {result.skipped} skipped (already there; --overwrite "
          f"redoes them), {len(result.failures)} failed")
    return 1 if result.failures else 0


def run_eval(args) -> int:
    import json
    from pathlib import Path

    from liif_jax.evaluate import eval_images, evaluate_folder, format_table
    from liif_jax.weights import load_model

    try:
        scales = [float(x) for x in args.scales.split(",")]
    except ValueError:
        raise RequestError(f"--scales must be numbers separated by commas, got {args.scales!r}") from None
    if not scales or any(not (s >= 1) for s in scales):
        raise RequestError("--scales must be >= 1")
    root = Path(args.data)
    if not root.is_dir():
        raise RequestError(f"--data must be a folder of images: {root}")
    files = eval_images(root)  # no images: said before the model loads
    model = load_model(args.weights)
    total = len(files) * len(scales)
    progress = Progress(total, "eval", args.quiet)
    try:
        result = evaluate_folder(root, scales, model, protocol=args.protocol, precision=args.precision,
                                 files=files, progress=progress.for_image(0, total),
                                 on_error=lambda failure: progress.write(f"{PROG}: error: {failure}"))
    finally:
        progress.close()
    if result.records:
        print(format_table(result.records))
    if args.json:
        from liif_jax.atomic import atomic_output

        with atomic_output(args.json) as f:
            f.write(json.dumps([r.as_dict() for r in result.records], indent=1).encode())
    return 1 if result.failures else 0


def run_compare(args) -> int:
    from liif_jax.api import plan_output
    from liif_jax.compare import compare_panels
    from liif_jax.imageio import check_output_path, read_input, write_image
    from liif_jax.weights import load_model

    check_output_path(args.output, args.input)
    image, meta = read_input(args.input)
    rgb = np.repeat(image.pixels[..., None], 3, -1) if image.gray else image.pixels
    truth = None
    if args.ground_truth:
        gt, _ = read_input(args.ground_truth)
        truth = np.repeat(gt.pixels[..., None], 3, -1) if gt.gray else gt.pixels
    (out_h, out_w), _ = plan_output(rgb.shape[:2], scale=args.scale, region=args.crop)
    model = load_model(args.weights)
    progress = Progress(out_h * out_w, "compare", args.quiet)  # the bar counts LIIF's pixels
    try:
        picture = compare_panels(rgb, args.scale, model, crop=args.crop, ground_truth=truth,
                                 progress=progress.for_image(0, out_h * out_w))
    finally:
        progress.close()
    write_image(args.output, picture, meta)
    panels = "nearest | bicubic | LIIF" + (" | ground truth" if truth is not None else "")
    print(f"{args.output}: {panels} x{args.scale:g}, {out_w}x{out_h} each")
    return 0


def run_convert(args) -> int:
    from pathlib import Path

    from liif_jax.convert import convert_file
    from liif_jax.models import describe_encoder
    from liif_jax.weights import flat_params

    if Path(args.dest).suffix.lower() != ".safetensors":
        raise CheckpointError(f"output must be a .safetensors file, got '{args.dest}'")
    license_text = None
    if args.license_file:
        try:
            license_text = Path(args.license_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"cannot read license file {args.license_file}: {exc}") from None
    model, notes = convert_file(args.source, args.dest, license_text)
    enc = model.spec["args"]["encoder_spec"]
    hidden = model.spec["args"]["imnet_spec"]["args"]["hidden_list"]
    n_params = sum(int(v.size) for v in flat_params(model.params).values())
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{args.dest}: {describe_encoder(enc)} "
          f"+ mlp {hidden}, {n_params:,} parameters, from sha256 {model.metadata['source_sha256'][:12]}...")
    return 0


def run_train(args) -> int:
    from pathlib import Path

    from liif_jax.configs import load_config
    from liif_jax.train.loop import train

    config = load_config(args.config)
    if not Path(args.data).is_dir():
        raise RequestError(f"--data must be a folder of images: {args.data}")
    if args.val_data and not Path(args.val_data).is_dir():
        raise RequestError(f"--val-data must be a folder of images: {args.val_data}")
    if args.init_from not in (None, "bundled") and not Path(args.init_from).is_file():
        raise RequestError(f"--init-from: no such weight file: {args.init_from} (or use 'bundled')")
    if args.steps is not None and args.steps < 1:
        raise RequestError(f"--steps must be >= 1, got {args.steps}")
    if Path(args.workdir).exists() and not Path(args.workdir).is_dir():
        raise RequestError(f"--workdir is a file, not a folder: {args.workdir}")
    if args.distributed:
        _init_distributed(args)
    result = train(config, args.data, args.workdir, steps=args.steps, init_from=args.init_from,
                   val_data=args.val_data, quiet=args.quiet)
    print(f"done: step {result.step}; export with: {PROG} export {args.workdir} model.safetensors")
    return 0


def run_export(args) -> int:
    from pathlib import Path

    from liif_jax.train.checkpoint import export_weights

    if Path(args.dest).suffix.lower() != ".safetensors":
        raise CheckpointError(f"output must be a .safetensors file, got '{args.dest}'")
    step, path = export_weights(args.source, args.dest)
    print(f"{args.dest}: weights after {step} training steps (from {path.name})")
    return 0


def run_gimp(args) -> int:
    from liif_jax import gimp_setup

    if args.weights is not None and args.action != "install":
        raise RequestError(f"--weights goes with 'gimp install', not 'gimp {args.action}'")
    if args.flatpak and args.action != "install":
        raise RequestError(f"--flatpak goes with 'gimp install', not 'gimp {args.action}'")
    if args.action == "install":
        return gimp_setup.run_install(weights=args.weights, flatpak=args.flatpak)
    action = {"uninstall": gimp_setup.run_uninstall, "doctor": gimp_setup.run_doctor}[args.action]
    return action()


def run_serve(args) -> int:
    from liif_jax.bridge.server import serve

    return serve(args.weights, idle_timeout=args.idle_timeout, path=args.socket)


def run_bridge(args) -> int:
    from liif_jax.bridge.worker import serve_stdio

    return serve_stdio(args.weights)


def _init_distributed(args) -> None:
    """``jax.distributed.initialize`` from --coordinator/--num-processes/--process-id, or
    auto-detected (TPU pods, SLURM, MPI) without them."""
    import jax

    kwargs = {}
    if args.coordinator:
        if args.num_processes is None or args.process_id is None:
            raise RequestError("--coordinator needs --num-processes and --process-id")
        kwargs = dict(coordinator_address=args.coordinator, num_processes=args.num_processes,
                      process_id=args.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as exc:
        raise RequestError(f"--distributed could not initialise ({one_line(exc)[:200]})") from None


def _distributed_share(args, jobs):
    """Initialise jax.distributed and keep this process's share of the images."""
    import jax

    _init_distributed(args)
    index, count = jax.process_index(), jax.process_count()
    return jobs[index::count], f"process {index}/{count}: "
