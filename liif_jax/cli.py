"""The ``liif-jax`` command. Parses, calls the library, shows progress, and turns every
library error into one line on stderr and an exit code -- here and nowhere else."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

import numpy as np

from liif_jax import __version__
from liif_jax.errors import LiifError, LiifWarning, RequestError

PROG = "liif-jax"

MAIN_HELP = """\
Arbitrary-scale super-resolution with LIIF (Local Implicit Image Function, CVPR 2021),
running the authors' EDSR-baseline-LIIF weights (bundled) in JAX on CPU, GPU or TPU.

examples:
  liif-jax upscale photo.png photo_x3.png --scale 3
  liif-jax upscale photo.jpg big.jpg --size 1440x1080      (width x height)
  liif-jax upscale scan.png wide.png --width 2000          (height keeps the aspect ratio)
  liif-jax convert edsr-baseline-liif.pth my.safetensors   (no torch needed)
  liif-jax train --data photos/ --workdir runs/ft --init-from bundled --steps 20000

Run 'liif-jax COMMAND --help' for a command's options.
"""

UPSCALE_HELP = """\
Upscale (or resample) IN to any size and write OUT. The output format follows OUT's
extension: .png .jpg/.jpeg .webp .tif/.tiff (8-bit, rounded to nearest; 16-bit PNG/TIFF
inputs give 16-bit PNG/TIFF outputs), or .npy (the exact float32 array in [0, 1], H x W x 3;
gray images give H x W).

Give the size one way: --scale S (or SX,SY), --size WIDTHxHEIGHT, or --width and/or
--height (one side alone keeps the aspect ratio). A scale s gives floor(n*s + 0.5) pixels.

examples:
  liif-jax upscale in.png out.png --scale 4
  liif-jax upscale in.png out.png --scale 2,1.5           (x2 wide, x1.5 tall)
  liif-jax upscale in.png out.npy --size 1440x1080
  liif-jax upscale in.jpg out.jpg --height 2160 --quality 92

IN may be a folder: every image below it (hidden files skipped) is upscaled into OUT (a
folder, created if needed) keeping the tree; existing outputs are skipped unless --overwrite;
one failing image is reported and skipped (the exit status is 1 at the end if any failed).
Each output keeps its input's format, or takes --format's; BMP, GIF, PNM and TGA inputs are
written as PNG (formats liif-jax does not write). Two inputs that would give the same output
(c.png and c.jpg with --format png) are refused before any work.

Big images are processed in tiles (exactly: tiles never change the result), sized
automatically to --max-memory or set with --tile. --max-memory is host memory on a CPU
(default 2GB, the output image included) and device memory on a GPU/TPU (default 3/4 of
the device's, at most 16GB; the output image lives in host memory beside it). --region
renders only part of the result, with the coordinates of the full render.

Precision: float32 reproduces the authors' model (the default on CPU); bfloat16 runs the
decoder (most of the work) in bfloat16, within 2/255 of it (the default on GPU/TPU). On a
CPU, bfloat16 pays where the CPU has native bfloat16 dot products (AVX512_BF16 or AMX: recent
Xeon and EPYC; measured 1.35-1.74x end to end on a 2-core AVX512_BF16 EPYC); elsewhere it
is emulated and we have not measured it.

EXIF orientation is applied; ICC profile, EXIF and DPI are carried to the output where the
format allows. Gray images stay gray. Alpha is upscaled too (its own LIIF pass; transparent
pixels first take their surroundings' colour, so edges get no dark fringes).

more examples:
  liif-jax upscale photos/ photos_x2/ --scale 2 --format png
  liif-jax upscale huge.tif huge_x2.tif --scale 2 --max-memory 1GB
  liif-jax upscale in.png crop.png --scale 4 --region 100,50,64,64   (x,y,w,h in input pixels)
"""

CONVERT_HELP = """\
Convert an original PyTorch LIIF checkpoint (as saved by the authors' train_liif.py, zip or
legacy format) to a liif-jax .safetensors weight file. torch is not needed and nothing in
the checkpoint is executed: its pickle may only name tensors and storages; anything else is
refused. The output carries the model spec, the source's sha256 and a license notice.

example:
  liif-jax convert edsr-baseline-liif.pth edsr-baseline-liif.safetensors
"""


BRIDGE_HELP = """\
Serve upscale requests on stdin/stdout: one JSON header line per request followed by raw
pixels (u8, u16 or float32; RGB, RGBA, GRAY, GRAYA), answered by progress lines and a result
header with raw pixels, or an error line. The model stays loaded between requests. Closing
stdin, a {"liif": 1, "op": "cancel"} line, or SIGTERM cancels a running request. The
protocol is documented in liif_jax/bridge/protocol.py. Used by the GIMP plug-in; any program
that cannot import JAX can use it.
"""


SERVE_HELP = """\
Keep the model loaded and compiled behind a Unix socket that only you can reach (mode 0600,
in $XDG_RUNTIME_DIR/liif-jax/ or /tmp/liif-jax-UID/; $LIIF_JAX_SOCKET overrides). On Windows
it is a named pipe with a random key instead (multiprocessing.connection), named with the key
in %LOCALAPPDATA%\\liif-jax\\endpoint.json (LIIF_JAX_TRANSPORT=connection: the same, over a
Unix socket, elsewhere). Each connection speaks the 'liif-jax bridge' protocol. Exits after
--idle-timeout seconds without a connection. The GIMP plug-in starts it on first use, so later
upscales start at once.
"""


GIMP_HELP = """\
install    copy the "Upscale (LIIF)..." filter into every GIMP 3.x / 2.10 profile found, with
           a config pointing at this Python ($LIIF_JAX_PYTHON overrides); restart GIMP after.
           --weights FILE: the filter uses FILE (e.g. the authors' rdn-liif.pth) instead of
           the bundled weights; checked here, recorded in the plug-in's liif_jax_gimp.json
uninstall  remove it again
doctor     print GIMP versions, plug-in folders, interpreter, weights, JAX devices, run one
           tiny upscale as the installed filter would, and give a verdict

The filter appears as Image > Upscale (LIIF)... (and Layer > Upscale Layer (LIIF)... in GIMP 3).
The Flatpak GIMP cannot run a Python outside its sandbox: with --flatpak (chosen by itself
when it is the only GIMP found) the plug-in reaches a worker on this computer through a socket
in $XDG_RUNTIME_DIR/app/org.gimp.GIMP/, started on demand by systemd user units. The Snap GIMP
is not supported: use GIMP from your distribution, the official installer, or an AppImage.
"""


EVAL_HELP = """\
Measure PSNR and SSIM with the paper's protocol for arbitrary scales, against bicubic: each
high-resolution image is cropped to a multiple of the scale, downsampled with PIL bicubic,
upscaled back by LIIF (and by bicubic), and compared with s+6 pixels shaved (div2k) or s
pixels shaved on luma (benchmark). Details: liif_jax/evaluate.py.

example:
  liif-jax eval --data photos/ --scales 2,3,4,6,12 --json results.json
"""


TRAIN_HELP = """\
Train LIIF with the paper's recipe, or fine-tune the bundled weights on your own photos.

DATA is any folder of high-resolution images (PNG, JPEG, WebP, TIFF, BMP, GIF, PNM, TGA;
searched recursively, hidden files skipped; every side at least 4 x the config's crop
size, 192 px for 'paper'). Each step samples random crops at random scales 1-4,
downsamples them with bicubic and learns to predict the original pixels. Real photos of the
kind you will upscale work best.

WORKDIR holds the run: config.json, log.jsonl (loss, learning rate, steps/s, validation
PSNR), checkpoints/ (Orbax checkpoints, the newest few; any a resume cannot use is moved
to skipped-checkpoints/ with why) and, if tensorboardX is installed, tensorboard/.
Running the same command again resumes from the newest checkpoint, exactly as if it had
never stopped; Ctrl+C or SIGTERM saves a checkpoint before stopping. --steps N trains up to
global step N (default: the config's total, 1M for 'paper').

CONFIG is 'paper' (EDSR-baseline-LIIF, batch 16, Adam 1e-4 halved at 200k/400k/600k/800k),
'rdn' (the paper's RDN-LIIF: the same recipe with the RDN encoder; fine-tune the authors'
rdn-liif.pth with --init-from), 'tiny' (a 4.7k-parameter model for CPU experiments) or a
.py file whose get_config()
returns a liif_jax.configs.TrainConfig (see liif_jax/configs/__init__.py).

The batch is split over all devices (GPUs/TPU cores); --distributed runs one process per
host with jax.distributed. 'liif-jax export WORKDIR model.safetensors' turns the result into
a weight file for 'upscale --weights', 'eval' and the GIMP plug-in.

examples:
  liif-jax train --config paper --data my_photos/ --workdir runs/ft --init-from bundled --steps 20000
  liif-jax train --config paper --data DIV2K_train_HR/ --workdir runs/paper --val-data DIV2K_valid_HR/
  liif-jax train --config tiny --data photos/ --workdir runs/tiny --steps 500
"""

EXPORT_HELP = """\
Write the inference weight file of a training run: SRC is a workdir (its newest usable
checkpoint), one checkpoint (a checkpoints/step_N folder) or a liif-jax 0.1.x checkpoint
file (step_N.safetensors); OUT a .safetensors file in the same format as
'liif-jax convert' writes, usable with 'upscale --weights', 'eval' and the GIMP plug-in.

example:
  liif-jax export runs/ft my-photos-liif.safetensors
"""

COMPARE_HELP = """\
Write one picture with the same enlargement by nearest neighbour, bicubic and LIIF side by
side (and the real high-resolution image, if you have it), each labelled.

examples:
  liif-jax compare small.png cmp.png --scale 4
  liif-jax compare small.png cmp.png --scale 4 --crop 40,30,64,48 --ground-truth original.png
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (and exit 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _scale_arg(text: str):
    parts = text.split(",")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected S or SX,SY, got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return values[0] if len(values) == 1 else tuple(values)


def _size_arg(text: str):
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1440x1080, got {text!r}")
    return int(parts[0]), int(parts[1])


def _quality_arg(text: str):
    try:
        q = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"quality must be 1..100, got {q}")
    return q


def _memory_arg(text: str):
    units = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20,
             "mib": 2**20, "g": 2**30, "gb": 2**30, "gib": 2**30}
    t = text.strip().lower()
    number = t.rstrip("kmgib")
    try:
        value = float(number) * units[t[len(number):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a size such as 2GB or 512MB, got {text!r}") from None
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    if not math.isfinite(value):  # 'inf', '1e400': int() of them would raise
        raise argparse.ArgumentTypeError(f"must be a finite size such as 2GB, got {text!r}")
    return int(value)


def _region_arg(text: str):
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H in input pixels, got {text!r}")
    return values


def _tile_arg(text: str):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _count_arg(text: str):
    try:
        n = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def add_upscale_args(p: argparse.ArgumentParser) -> None:
    from liif_jax.api import DEFAULT_MAX_PIXELS
    from liif_jax.imageio import DEFAULT_QUALITY, OUTPUT_FORMATS as OUTPUT_EXTENSIONS

    p.add_argument("input", metavar="IN", help="image to upscale (PNG, JPEG, WebP, TIFF, BMP, ...)")
    p.add_argument("output", metavar="OUT", help="where to write the result; format from the extension")
    size = p.add_argument_group("output size (one of)")
    size.add_argument("--scale", "-s", type=_scale_arg, metavar="S[,SY]",
                      help="scale factor, e.g. 3.3, or SX,SY for different factors per axis")
    size.add_argument("--size", type=_size_arg, metavar="WxH", help="exact output size, width first")
    size.add_argument("--width", "-W", type=int, metavar="W", help="output width in pixels")
    size.add_argument("--height", "-H", type=int, metavar="H", help="output height in pixels")
    p.add_argument("--weights", metavar="FILE",
                   help="a liif-jax .safetensors file or an original .pth checkpoint "
                        "(default: the bundled EDSR-baseline-LIIF)")
    p.add_argument("--quality", type=_quality_arg, default=DEFAULT_QUALITY, metavar="Q",
                   help=f"JPEG/WebP quality 1-100 (default {DEFAULT_QUALITY})")
    p.add_argument("--max-pixels", type=_count_arg, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse outputs with more pixels (default {DEFAULT_MAX_PIXELS:,}; 0 = no limit)")
    run = p.add_argument_group("performance")
    run.add_argument("--tile", type=_tile_arg, metavar="N",
                     help="input pixels per tile side (default: automatic from --max-memory)")
    run.add_argument("--max-memory", type=_memory_arg, default=None, metavar="SIZE",
                     help="memory budget for the automatic tile size, e.g. 1GB: host memory on "
                          "CPU (default 2GB), device memory on GPU/TPU (default 3/4 of it, at "
                          "most 16GB)")
    run.add_argument("--precision", choices=("float32", "bfloat16"),
                     help="float32 (default on CPU: exact) or bfloat16 (default on GPU/TPU: "
                          "within 2/255, faster; on CPU only with native bf16, see above)")
    p.add_argument("--region", type=_region_arg, metavar="X,Y,W,H",
                   help="render only this part of the input (input pixels, fractions allowed)")
    folder = p.add_argument_group("folders (IN is a folder)")
    folder.add_argument("--format", choices=sorted(e.lstrip(".") for e in OUTPUT_EXTENSIONS),
                        help="output format for a folder (default: each file's own; BMP, GIF, PNM, TGA become PNG)")
    folder.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    _add_distributed_args(folder, "let each process take its share of the images")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _add_distributed_args(group, what: str) -> None:
    group.add_argument("--distributed", action="store_true",
                       help="multi-host: call jax.distributed.initialize() (auto-detects TPU pods, "
                            f"SLURM, MPI) and {what}")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="with --distributed outside a detected cluster: the coordinator address")
    group.add_argument("--num-processes", type=int, metavar="N", help="with --coordinator")
    group.add_argument("--process-id", type=int, metavar="I", help="with --coordinator")


def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SRC.pth", help="PyTorch checkpoint from the LIIF training script")
    p.add_argument("dest", metavar="DST.safetensors", help="liif-jax weight file to write")
    p.add_argument("--license-file", metavar="FILE",
                   help="license text to embed (default: the BSD-3 notice for the authors' "
                        "checkpoint, else 'unknown')")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=MAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    up = sub.add_parser("upscale", help="upscale an image to any scale or size", description=UPSCALE_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_upscale_args(up)
    up.set_defaults(run=run_upscale)
    conv = sub.add_parser("convert", help="convert an original .pth checkpoint (no torch needed)",
                          description=CONVERT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_args(conv)
    conv.set_defaults(run=run_convert)
    bridge = sub.add_parser("bridge", help="serve the bridge protocol on stdin/stdout (for GIMP and other hosts)",
                            description=BRIDGE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    bridge.add_argument("--weights", metavar="FILE", help="weights to serve (default: the bundled ones)")
    bridge.set_defaults(run=run_bridge)
    serve = sub.add_parser("serve", help="keep a warm worker behind a private local socket",
                           description=SERVE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--weights", metavar="FILE", help="weights to serve (default: the bundled ones)")
    serve.add_argument("--idle-timeout", type=float, default=15 * 60, metavar="SECONDS",
                       help="exit after this long without a connection (default 900)")
    serve.add_argument("--socket", metavar="PATH", help="socket path (default: see above)")
    serve.set_defaults(run=run_serve)
    gimp = sub.add_parser("gimp", help="install, remove or check the GIMP plug-in",
                          description=GIMP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    gimp.add_argument("action", choices=("install", "uninstall", "doctor"))
    gimp.add_argument("--weights", metavar="FILE",
                      help="install: the weight file the filter uses (.safetensors or .pth, e.g. the "
                           "authors' rdn-liif.pth; default: the bundled ones)")
    gimp.add_argument("--flatpak", action="store_true",
                      help="install: for the Flatpak GIMP, through a worker systemd starts on demand "
                           "(chosen by itself when only a Flatpak GIMP is found)")
    gimp.set_defaults(run=run_gimp)
    ev = sub.add_parser("eval", help="PSNR/SSIM with the paper's protocol, against bicubic",
                        description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--data", required=True, metavar="DIR", help="folder of high-resolution images")
    ev.add_argument("--scales", default="2,3,4", metavar="S,S,...", help="scales (default 2,3,4)")
    ev.add_argument("--protocol", choices=("div2k", "benchmark"), default="div2k")
    ev.add_argument("--weights", metavar="FILE", help="weights (default: the bundled ones)")
    ev.add_argument("--json", metavar="FILE", help="also write one record per image and scale")
    ev.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    ev.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    ev.set_defaults(run=run_eval)
    tr = sub.add_parser("train", help="train or fine-tune (the paper's recipe, resumable)",
                        description=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--config", default="paper", metavar="CONFIG", help="paper | rdn | tiny | FILE.py (default paper)")
    tr.add_argument("--data", required=True, metavar="DIR", help="folder of high-resolution training images")
    tr.add_argument("--workdir", required=True, metavar="DIR", help="folder of this run (created; resumed if present)")
    tr.add_argument("--steps", type=int, metavar="N", help="train up to global step N (default: the config's total)")
    tr.add_argument("--init-from", metavar="WEIGHTS",
                    help="start from these weights: 'bundled' or a .safetensors/.pth file (fine-tuning)")
    tr.add_argument("--val-data", metavar="DIR", help="folder of images for validation PSNR (paper's protocol)")
    tr.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    dist = tr.add_argument_group("multi-host")
    _add_distributed_args(dist, "each process builds its share of every batch")
    tr.set_defaults(run=run_train)
    ex = sub.add_parser("export", help="a training run's weights as an inference weight file",
                        description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("source", metavar="SRC", help="training workdir or checkpoint file")
    ex.add_argument("dest", metavar="OUT.safetensors", help="weight file to write")
    ex.set_defaults(run=run_export)
    cmp_ = sub.add_parser("compare", help="nearest | bicubic | LIIF side by side",
                          description=COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp_.add_argument("input", metavar="IN", help="image to enlarge")
    cmp_.add_argument("output", metavar="OUT", help="picture to write (.png recommended)")
    cmp_.add_argument("--scale", "-s", type=float, required=True, metavar="S", help="scale factor")
    cmp_.add_argument("--crop", type=_region_arg, metavar="X,Y,W,H", help="compare only this part (input pixels)")
    cmp_.add_argument("--ground-truth", metavar="FILE", help="the real high-resolution image, shown last")
    cmp_.add_argument("--weights", metavar="FILE", help="weights (default: the bundled ones)")
    cmp_.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    cmp_.set_defaults(run=run_compare)
    return parser


def run_compare(args) -> int:
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
    from liif_jax.api import plan_output

    (out_h, out_w), _ = plan_output(rgb.shape[:2], scale=args.scale, region=args.crop)
    model = load_model(args.weights)
    progress = _Progress(out_h * out_w, "compare", args.quiet)  # the bar counts LIIF's pixels
    try:
        picture = compare_panels(rgb, args.scale, model, crop=args.crop, ground_truth=truth,
                                 progress=progress.for_image(0, out_h * out_w))
    finally:
        progress.close()
    write_image(args.output, picture, meta)
    panels = "nearest | bicubic | LIIF" + (" | ground truth" if truth is not None else "")
    print(f"{args.output}: {panels} x{args.scale:g}, {out_w}x{out_h} each")
    return 0


def run_eval(args) -> int:
    import json
    from pathlib import Path

    from liif_jax.evaluate import evaluate_image, format_table
    from liif_jax.imageio import find_images, to_uint8
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
    files = find_images(root)
    if not files:
        raise RequestError(f"no images found in {root}")
    from liif_jax.imageio import read_input

    model = load_model(args.weights)
    records, failed = [], 0
    progress = _Progress(len(files) * len(scales), "eval", args.quiet)
    try:
        for path in files:
            rel = path.relative_to(root)
            try:
                image, _ = read_input(path)
            except LiifError as exc:  # one bad file is reported; the others are measured
                failed += 1
                progress.write(f"{PROG}: error: {rel}: {_one_line(exc)}")
                if progress.bar is not None:
                    progress.bar.update(len(scales))
                continue
            rgb = np.repeat(image.pixels[..., None], 3, -1) if image.gray else image.pixels
            hr = to_uint8(rgb)
            for scale in scales:
                try:
                    records.append(evaluate_image(str(rel), hr, scale, model,
                                                  protocol=args.protocol, precision=args.precision))
                except LiifError as exc:  # e.g. a scale too large for this image
                    failed += 1
                    progress.write(f"{PROG}: error: {rel}: x{scale:g}: {_one_line(exc)}")
                if progress.bar is not None:
                    progress.bar.update(1)
    finally:
        progress.close()
    if records:
        print(format_table(records))
    if args.json:
        from liif_jax.atomic import atomic_output

        with atomic_output(args.json) as f:
            f.write(json.dumps([r.as_dict() for r in records], indent=1).encode())
    return 1 if failed else 0


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

    from liif_jax.errors import CheckpointError
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


class _Progress:
    """A tqdm bar on stderr (in output pixels) that appears only for work longer than about a
    second. ``for_image(offset)`` gives the callback for one image of a set."""

    def __init__(self, total: int, desc: str, quiet: bool):
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="px", unit_scale=True, delay=1.0,
                            file=sys.stderr, leave=False, dynamic_ncols=True)

    def for_image(self, offset: int, n_px: int):
        """Callback for one image whose share of the bar is ``n_px`` starting at ``offset``
        (the library's own total may count extra passes, e.g. for alpha)."""
        def callback(done: int, total: int):
            if self.bar is not None and total:
                self.bar.update(offset + int(n_px * done / total) - self.bar.n)
        return callback

    def write(self, line: str):
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _size_request(args):
    ways = [args.scale is not None, args.size is not None, args.width is not None or args.height is not None]
    if sum(ways) != 1:
        raise RequestError("give the output size one way: --scale, --size, or --width/--height")
    return dict(scale=args.scale, size=args.size, width=args.width, height=args.height)


def _render_size_kwargs(args, in_hw) -> dict:
    """--scale passes through; --size/--width/--height become an exact size (of the region,
    if one is given: that size is spread over it)."""
    from liif_jax.api import output_size, parse_region

    request = _size_request(args)
    if request["scale"] is not None:
        return {"scale": request["scale"]}
    region = parse_region(args.region, in_hw)
    basis = in_hw if region is None else (region[3], region[2])
    out_h, out_w = output_size(basis, size=request["size"], width=request["width"],
                               height=request["height"])
    return {"size": (out_w, out_h)}


def _upscale_file(src, dst, args, model, progress, image=None) -> tuple:
    """Read (unless ``image`` = (FloatImage, ImageMeta) is given), render and write one
    image; returns ((h, w), (H, W))."""
    from liif_jax.api import upscale
    from liif_jax.imageio import output_format, read_input, write_image

    image, meta = image or read_input(src)
    in_hw = image.pixels.shape[:2]
    fmt = output_format(dst)
    eight_bit = fmt is not None and not (meta.bits > 8 and fmt in ("PNG", "TIFF"))
    pixels = upscale(image, model=model, max_pixels=args.max_pixels, progress=progress,
                     region=args.region, tile=args.tile, max_memory=args.max_memory,
                     precision=args.precision, dtype=np.uint8 if eight_bit else np.float32,
                     **_render_size_kwargs(args, in_hw))
    write_image(dst, pixels, meta, quality=args.quality)
    return in_hw, pixels.shape[:2]


def run_upscale(args) -> int:
    from pathlib import Path

    from liif_jax.imageio import check_output_path, read_input
    from liif_jax.weights import load_model

    _size_request(args)
    if Path(args.input).is_dir():
        return run_upscale_folder(args)
    if args.distributed or args.format:
        raise RequestError("--distributed and --format are for folders (IN is a folder)")
    # --overwrite asks nothing more of a single file: OUT is always replaced (atomically).
    check_output_path(args.output, args.input)
    image = read_input(args.input)  # a bad input is reported before the model loads
    total = _planned_pixels(args, image[0].pixels.shape[:2])
    model = load_model(args.weights)
    progress = _Progress(total, os.path.basename(args.output), args.quiet)
    try:
        in_hw, out_hw = _upscale_file(args.input, args.output, args, model,
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


def _planned_pixels(args, in_hw) -> int:
    """Output pixels an image of header size ``in_hw`` will give (0 if unknown or invalid:
    the real run reports why)."""
    from liif_jax.api import plan_output

    if in_hw is None:
        return 0
    try:
        out_hw, _ = plan_output(in_hw, region=args.region, **_render_size_kwargs(args, in_hw))
    except LiifError:
        return 0
    return out_hw[0] * out_hw[1]


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
        raise RequestError(f"--distributed could not initialise ({_one_line(exc)[:200]})") from None


def _distributed_share(args, jobs):
    """Initialise jax.distributed and keep this process's share of the images."""
    import jax

    _init_distributed(args)
    index, count = jax.process_index(), jax.process_count()
    return jobs[index::count], f"process {index}/{count}: "


def run_upscale_folder(args) -> int:
    from liif_jax.folders import plan_folder
    from liif_jax.imageio import header_size, output_format
    from liif_jax.weights import load_model

    # Every check on the whole set (OUT, collisions) comes before any process takes its share.
    jobs = [(j.src, j.dst, j.rel) for j in plan_folder(args.input, args.output, args.format)]
    prefix = ""
    if args.distributed:
        jobs, prefix = _distributed_share(args, jobs)
    todo, skipped = [], 0
    for src, dst, rel in jobs:
        if dst.exists() and not args.overwrite:
            skipped += 1
        else:
            todo.append((src, dst, rel))
    sizes = [_planned_pixels(args, header_size(src)) for src, _, _ in todo]
    total = sum(sizes)
    model = load_model(args.weights) if todo else None
    progress = _Progress(total, f"{prefix}{len(todo)} images", args.quiet)
    done_px, ok, failed = 0, 0, 0
    try:
        for (src, dst, rel), n_px in zip(todo, sizes):
            try:
                output_format(dst)
                dst.parent.mkdir(parents=True, exist_ok=True)
                _upscale_file(src, dst, args, model, progress.for_image(done_px, n_px))
                ok += 1
            except LiifError as exc:
                failed += 1
                progress.write(f"{PROG}: error: {rel}: {_one_line(exc)}")
            except OSError as exc:
                failed += 1
                progress.write(f"{PROG}: error: {rel}: {exc.strerror or _one_line(exc)}")
            done_px += n_px
    finally:
        progress.close()
    summary = f"{prefix}{ok} upscaled, {skipped} skipped (already there; --overwrite redoes them), {failed} failed"
    print(summary, file=sys.stderr)
    return 1 if failed else 0


def run_convert(args) -> int:
    from pathlib import Path

    from convert_weights.convert import convert_file
    from liif_jax.errors import CheckpointError
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


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _show_warning(message, category, filename, lineno, file=None, line=None):
    prefix = "warning" if issubclass(category, LiifWarning) else category.__name__
    text = f"{PROG}: {prefix}: {_one_line(message)}"
    if "tqdm" in sys.modules:  # a bar may be on screen: tqdm clears it, writes, redraws it
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def run(args, prog: str = PROG) -> int:
    """Run parsed ``args``; every failure becomes one line on stderr and an exit code."""
    warnings.showwarning = _show_warning
    try:
        return args.run(args)
    except LiifError as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{prog}: error: out of memory (try a smaller output)", file=sys.stderr)
        return 1
    except Exception as exc:  # never a traceback for a user, unless they ask for one
        if os.environ.get("LIIF_JAX_DEBUG"):
            raise
        print(f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)[:300]} "
              f"(set LIIF_JAX_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def main(argv=None, prog: str = PROG) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return run(args, prog)


def convert_main(argv=None, prog: str = "python -m convert_weights") -> int:
    """Entry point of ``python -m convert_weights``: the ``convert`` command on its own."""
    parser = _Parser(prog=prog, description=CONVERT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_args(parser)
    args = parser.parse_args(argv)
    args.run = run_convert
    return run(args, prog)


if __name__ == "__main__":
    sys.exit(main())
