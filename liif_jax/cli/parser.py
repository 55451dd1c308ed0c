"""The parser of the ``liif-jax`` command: its help texts, the types of its arguments (also
used by ``python -m liif_jax.beam``) and ``build_parser``, which names each command's ``run_*``
function (``liif_jax.cli.commands``)."""

from __future__ import annotations

import argparse
import math

from liif_jax import __version__
from liif_jax.cli.output import PROG
from liif_jax.constants import PRECISIONS
from liif_jax.errors import RequestError

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

Give the size one way: --scale S (or SX,SY), --size GEOMETRY (1440x1080 exactly, 2000x,
x1080, 400%), or --width and/or --height (one side alone keeps the aspect ratio). A scale s
gives floor(n*s + 0.5) pixels.

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


def scale_arg(text: str):
    parts = text.split(",")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected S or SX,SY, got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return values[0] if len(values) == 1 else tuple(values)


SIZE_FORMS = "WxH (exact), W or Wx (width), xH (height) or N% (scale), e.g. 1440x1080, 2000x, x1080, 400%"


def size_arg(text: str) -> dict:
    """``--size`` in ImageMagick's geometry forms, as the ``UpscaleRequest`` fields they set:
    ``WxH`` (and ``WxH!``) an exact size -- unlike ImageMagick's plain ``WxH``, which fits
    inside the box keeping the aspect ratio, an upscaler is asked for exact frames --; ``W``
    or ``Wx`` the width and ``xH`` the height, the other side keeping the aspect ratio; ``N%``
    the scale N/100."""
    spec = text.strip().lower().removesuffix("!")
    try:
        if spec.endswith("%"):
            return {"scale": float(spec[:-1]) / 100}
        width, sep, height = spec.partition("x")
        if width.isdigit() and height.isdigit():
            return {"size": (int(width), int(height))}
        if width.isdigit() and not height:
            return {"width": int(width)}
        if sep and not width and height.isdigit():
            return {"height": int(height)}
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected {SIZE_FORMS}; got {text!r}")


def size_fields(scale, size: dict | None, width=None, height=None) -> dict:
    """``UpscaleRequest``'s size fields from --scale, --size (a ``size_arg`` result), --width
    and --height; refuses a size given more than one way."""
    if sum([scale is not None, size is not None, width is not None or height is not None]) != 1:
        raise RequestError("give the output size one way: --scale, --size, or --width/--height")
    return {"scale": scale, "size": None, "width": width, "height": height, **(size or {})}


def quality_arg(text: str):
    try:
        q = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"quality must be 1..100, got {q}")
    return q


def memory_arg(text: str):
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


def region_arg(text: str):
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H in input pixels, got {text!r}")
    return values


def tile_arg(text: str):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def count_arg(text: str):
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
    size.add_argument("--scale", "-s", type=scale_arg, metavar="S[,SY]",
                      help="scale factor, e.g. 3.3, or SX,SY for different factors per axis")
    size.add_argument("--size", type=size_arg, metavar="GEOMETRY",
                      help="ImageMagick-style: WxH an exact size, width first (not fitted in the box as "
                           "ImageMagick's WxH; its WxH! is the same), W or Wx a width and xH a height "
                           "(the other side keeps the aspect ratio), N%% a scale (400%% = x4)")
    size.add_argument("--width", "-W", type=int, metavar="W", help="output width in pixels")
    size.add_argument("--height", "-H", type=int, metavar="H", help="output height in pixels")
    p.add_argument("--weights", metavar="FILE",
                   help="a liif-jax .safetensors file or an original .pth checkpoint "
                        "(default: the bundled EDSR-baseline-LIIF)")
    p.add_argument("--quality", type=quality_arg, default=DEFAULT_QUALITY, metavar="Q",
                   help=f"JPEG/WebP quality 1-100 (default {DEFAULT_QUALITY})")
    p.add_argument("--max-pixels", type=count_arg, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse outputs with more pixels (default {DEFAULT_MAX_PIXELS:,}; 0 = no limit)")
    run = p.add_argument_group("performance")
    run.add_argument("--tile", type=tile_arg, metavar="N",
                     help="input pixels per tile side (default: automatic from --max-memory)")
    run.add_argument("--max-memory", type=memory_arg, default=None, metavar="SIZE",
                     help="memory budget for the automatic tile size, e.g. 1GB: host memory on "
                          "CPU (default 2GB), device memory on GPU/TPU (default 3/4 of it, at "
                          "most 16GB)")
    run.add_argument("--precision", choices=PRECISIONS,
                     help="float32 (default on CPU: exact) or bfloat16 (default on GPU/TPU: "
                          "within 2/255, faster; on CPU only with native bf16, see above)")
    p.add_argument("--region", type=region_arg, metavar="X,Y,W,H",
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
    from liif_jax.bridge.server import DEFAULT_IDLE_TIMEOUT_S
    from liif_jax.cli.commands import (run_bridge, run_compare, run_convert, run_eval, run_export, run_gimp,
                                       run_serve, run_train, run_upscale)
    from liif_jax.evaluate import PROTOCOLS

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
    serve.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S, metavar="SECONDS",
                       help=f"exit after this long without a connection (default {DEFAULT_IDLE_TIMEOUT_S:g})")
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
    ev.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0])
    ev.add_argument("--weights", metavar="FILE", help="weights (default: the bundled ones)")
    ev.add_argument("--json", metavar="FILE", help="also write one record per image and scale")
    ev.add_argument("--precision", choices=PRECISIONS, default="float32")
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
    cmp_.add_argument("--crop", type=region_arg, metavar="X,Y,W,H", help="compare only this part (input pixels)")
    cmp_.add_argument("--ground-truth", metavar="FILE", help="the real high-resolution image, shown last")
    cmp_.add_argument("--weights", metavar="FILE", help="weights (default: the bundled ones)")
    cmp_.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    cmp_.set_defaults(run=run_compare)
    return parser


def convert_parser(prog: str) -> argparse.ArgumentParser:
    """The parser of ``python -m convert_weights``: the ``convert`` command on its own."""
    from liif_jax.cli.commands import run_convert

    parser = _Parser(prog=prog, description=CONVERT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_args(parser)
    parser.set_defaults(run=run_convert)
    return parser
