"""The ``liif-jax`` command. Parses, calls the library, shows progress, and turns every
library error into one line on stderr and an exit code -- here and nowhere else."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

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

Run 'liif-jax COMMAND --help' for a command's options.
"""

UPSCALE_HELP = """\
Upscale (or resample) IN to any size and write OUT. The output format follows OUT's
extension: .png .jpg/.jpeg .webp .tif/.tiff (8-bit, rounded to nearest), or .npy (the exact
float32 array in [0, 1], H x W x 3; gray images give H x W).

Give the size one way: --scale S (or SX,SY), --size WIDTHxHEIGHT, or --width and/or
--height (one side alone keeps the aspect ratio). A scale s gives floor(n*s + 0.5) pixels.

examples:
  liif-jax upscale in.png out.png --scale 4
  liif-jax upscale in.png out.png --scale 2,1.5           (x2 wide, x1.5 tall)
  liif-jax upscale in.png out.npy --size 1440x1080
  liif-jax upscale in.jpg out.jpg --height 2160 --quality 92

EXIF orientation is applied; ICC profile, EXIF and DPI are carried to the output where the
format allows. Gray images stay gray. Alpha channels are dropped (with a warning) for now.
"""

CONVERT_HELP = """\
Convert an original PyTorch LIIF checkpoint (as saved by the authors' train_liif.py, zip or
legacy format) to a liif-jax .safetensors weight file. torch is not needed and nothing in
the checkpoint is executed: its pickle may only name tensors and storages; anything else is
refused. The output carries the model spec, the source's sha256 and a license notice.

example:
  liif-jax convert edsr-baseline-liif.pth edsr-baseline-liif.safetensors
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
    from liif_jax.imageio import DEFAULT_QUALITY

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
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


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
    return parser


class _Progress:
    """A tqdm bar on stderr that appears only for work longer than about a second."""

    def __init__(self, total: int, desc: str, quiet: bool):
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="px", unit_scale=True, delay=1.0,
                            file=sys.stderr, leave=False, dynamic_ncols=True)

    def __call__(self, done: int, total: int):
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run_upscale(args) -> int:
    from liif_jax.api import check_pixel_limit, output_size, upscale
    from liif_jax.imageio import check_output_path, read_image, write_image
    from liif_jax.weights import load_model

    ways = [args.scale is not None, args.size is not None, args.width is not None or args.height is not None]
    if sum(ways) != 1:
        raise RequestError("give the output size one way: --scale, --size, or --width/--height")
    check_output_path(args.output, args.input)
    image, meta = read_image(args.input)
    out_hw = output_size(image.pixels.shape[:2], scale=args.scale, size=args.size,
                         width=args.width, height=args.height)
    check_pixel_limit(out_hw, args.max_pixels)
    model = load_model(args.weights)
    progress = _Progress(out_hw[0] * out_hw[1], os.path.basename(args.output), args.quiet)
    try:
        pixels = upscale(image, size=(out_hw[1], out_hw[0]), model=model, max_pixels=args.max_pixels,
                         progress=progress)
    finally:
        progress.close()
    write_image(args.output, pixels, meta, quality=args.quality)
    if not args.quiet:
        h, w = image.pixels.shape[:2]
        print(f"{args.output}: {w}x{h} -> {out_hw[1]}x{out_hw[0]}", file=sys.stderr)
    return 0


def run_convert(args) -> int:
    from pathlib import Path

    from convert_weights.convert import convert_file
    from liif_jax.errors import CheckpointError
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
    print(f"{args.dest}: {enc['name']} ({enc['args']['n_resblocks']} blocks x {enc['args']['n_feats']}) "
          f"+ mlp {hidden}, {n_params:,} parameters, from sha256 {model.metadata['source_sha256'][:12]}...")
    return 0


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _show_warning(message, category, filename, lineno, file=None, line=None):
    prefix = "warning" if issubclass(category, LiifWarning) else category.__name__
    print(f"{PROG}: {prefix}: {_one_line(message)}", file=sys.stderr)


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
