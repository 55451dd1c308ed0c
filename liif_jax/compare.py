"""``liif-jax compare``: the same enlargement by nearest, bicubic and LIIF side by side,
labelled -- the quickest way to see what LIIF adds (and, given the original, how close it
gets)."""

from __future__ import annotations

import numpy as np

PANEL_GAP = 8
LABEL_HEIGHT = 22


def compare_panels(image01_rgb: np.ndarray, scale: float, model, crop=None, ground_truth=None,
                   progress=None) -> np.ndarray:
    """A uint8 (H, W, 3) picture: nearest | bicubic | LIIF (| ground truth), each labelled.

    ``crop`` = (x, y, w, h) in input pixels limits the panels to that part (LIIF renders only
    that window, with the full image's coordinates).
    """
    from PIL import Image, ImageDraw

    from liif_jax.api import output_size, upscale
    from liif_jax.imageio import to_uint8

    h, w = image01_rgb.shape[:2]
    region = crop or (0, 0, w, h)
    out_h, out_w = output_size((region[3], region[2]), scale=scale)
    full_h, full_w = output_size((h, w), scale=scale)
    liif = to_uint8(upscale(image01_rgb, scale=scale, region=None if crop is None else crop,
                            model=model, progress=progress))
    src = Image.fromarray(to_uint8(image01_rgb))
    panels = []
    for label, resample in (("nearest", Image.NEAREST), ("bicubic", Image.BICUBIC)):
        big = np.asarray(src.resize((full_w, full_h), resample))
        y0, x0 = round(region[1] * full_h / h), round(region[0] * full_w / w)
        panels.append((label, big[y0:y0 + out_h, x0:x0 + out_w]))
    panels.append(("LIIF", liif[:out_h, :out_w]))
    if ground_truth is not None:
        gt = to_uint8(ground_truth)
        gh, gw = gt.shape[:2]
        if full_h <= gh <= full_h + scale and full_w <= gw <= full_w + scale:
            gt = gt[:full_h, :full_w]  # the original's crop to a multiple of the scale
        else:
            gt = np.asarray(Image.fromarray(gt).resize((full_w, full_h), Image.BICUBIC))
        y0, x0 = round(region[1] * full_h / h), round(region[0] * full_w / w)
        panels.append(("ground truth", gt[y0:y0 + out_h, x0:x0 + out_w]))
    width = sum(p.shape[1] for _, p in panels) + PANEL_GAP * (len(panels) - 1)
    canvas = Image.new("RGB", (width, out_h + LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for label, panel in panels:
        canvas.paste(Image.fromarray(panel), (x, LABEL_HEIGHT))
        draw.text((x + 4, 4), label if label == "ground truth" else f"{label} x{scale:g}", fill=(0, 0, 0))
        x += panel.shape[1] + PANEL_GAP
    return np.asarray(canvas)
