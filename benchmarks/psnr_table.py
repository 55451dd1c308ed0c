"""Regenerate the full PSNR/SSIM table of the docs: the bundled weights on scikit-image's
sample photos at x2..x18 with the paper's protocol, next to the original's reference numbers.

    python benchmarks/psnr_table.py                                  # print the table
    python benchmarks/psnr_table.py --reference ../shared/psnr-reference.md --out docs/psnr-table.md

With ``--reference`` (the original's table, made with the authors' own test code) each row
shows the original's LIIF PSNR and our difference to it, and the script prints the largest
difference at the end. CI checks a cheap subset of these rows (tests/test_evaluate.py); this
script is the whole table. It takes about two minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SCALES = (2, 3, 4, 6, 12, 18)
ROW = re.compile(r"^\| (\w+) \(\d+x\d+\) \| x(\d+) \| [^|]+\| [^|]+\| ([\d.]+) \| ([\d.]+) \|")


def read_reference(path) -> dict:
    """{(photo, scale): (LIIF dB, bicubic dB)} from the original's psnr-reference.md."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            out[(m.group(1), int(m.group(2)))] = (float(m.group(3)), float(m.group(4)))
    return out


def main() -> int:
    import jax
    import skimage.data

    from liif_jax.evaluate import evaluate_image
    from liif_jax.weights import load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="the original's psnr-reference.md, to compare against")
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")
    reference = read_reference(args.reference) if args.reference else {}
    model = load_model()
    head = "| photo | scale | LIIF PSNR | bicubic PSNR | gain | LIIF SSIM | bicubic SSIM |"
    rule = "|---|---|---|---|---|---|---|"
    if reference:
        head += " original LIIF PSNR | ours - original |"
        rule += "---|---|"
    lines = [head, rule]
    records, worst, t0 = [], 0.0, time.perf_counter()
    for name in PHOTOS:
        hr = getattr(skimage.data, name)()
        for s in SCALES:
            r = evaluate_image(name, hr, float(s), model)
            records.append(r)
            row = (f"| {name} ({hr.shape[0]}x{hr.shape[1]}) | x{s} | {r.psnr:.4f} | {r.psnr_bicubic:.4f} | "
                   f"{r.psnr - r.psnr_bicubic:+.2f} | {r.ssim:.4f} | {r.ssim_bicubic:.4f} |")
            if reference:
                ref = reference[(name, s)][0]
                worst = max(worst, abs(r.psnr - ref))
                row += f" {ref:.4f} | {r.psnr - ref:+.4f} |"
            lines.append(row)
            print(row, flush=True)
    lines += ["", "| mean of the 4 photos | " + " | ".join(f"x{s}" for s in SCALES) + " |",
              "|---|" + "---|" * len(SCALES)]
    for label, key in (("LIIF PSNR", "psnr"), ("bicubic PSNR", "psnr_bicubic"),
                       ("LIIF SSIM", "ssim"), ("bicubic SSIM", "ssim_bicubic")):
        means = [np.mean([getattr(r, key) for r in records if r.scale == s]) for s in SCALES]
        digits = 2 if "PSNR" in label else 4
        lines.append(f"| {label} | " + " | ".join(f"{m:.{digits}f}" for m in means) + " |")
    print("\n".join(lines[-6:]))
    print(f"\n{len(records)} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if reference:
        print(f"largest |ours - original| LIIF PSNR: {worst:.4f} dB", file=sys.stderr)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
