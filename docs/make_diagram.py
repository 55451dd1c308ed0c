"""Draw docs/images/how-liif-works.png: the LIIF pipeline on real data, one output pixel followed
through it. Run from the repository root: ``python docs/make_diagram.py``.

Everything drawn is computed: the input is a 24x24 crop of scikit-image's cat photo (its eye),
the feature panel is the bundled encoder's 64-channel output projected to 3 colours with PCA,
the four neighbours, their blend weights and the output are what ``liif_jax`` computes for the
marked output pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).parent / "images" / "how-liif-works.png"
PANEL = 216  # display size of each image panel
SCALE = 4
QUERY = (45, 50)  # the followed output pixel (row, column) of the x4 output
NEIGHBOUR_COLOURS = [(230, 60, 60), (60, 170, 60), (60, 110, 230), (230, 170, 30)]


def font(size):
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def main():
    import jax
    import skimage.data

    from liif_jax import engine, geometry
    from liif_jax.weights import load_model

    jax.config.update("jax_default_matmul_precision", "highest")
    photo = skimage.data.chelsea()
    lr = np.asarray(Image.fromarray(photo[60:156, 130:226]).resize((24, 24), Image.BICUBIC))
    h, w = lr.shape[:2]
    model = load_model()
    inp = (lr.astype(np.float32) / 255 - 0.5) / 0.5
    feat = np.asarray(model.module.apply({"params": model.params}, inp[None], method="encode"))[0]
    flat = feat.reshape(-1, feat.shape[-1])
    centred = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pca = centred @ vt[:3].T
    pca = (pca - pca.min(0)) / (pca.max(0) - pca.min(0))
    feat_rgb = (pca.reshape(h, w, 3) * 255).astype(np.uint8)
    out_hw = (h * SCALE, w * SCALE)
    out = engine.render(model, lr.astype(np.float32) / 255, out_hw)
    out_u8 = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)

    # the followed query: its coordinate, its four neighbours and their weights
    coord = geometry.make_coord(out_hw)[QUERY[0] * out_hw[1] + QUERY[1]][None, None]
    cell = geometry.make_cell(out_hw, 1)[None]
    geo = geometry.query_geometry(coord, cell, (h, w), True)
    idx = geo.index[:, 0, 0]  # (4, 2) row, col of each ensemble member
    weights = np.asarray(geometry.ensemble_weights(geo.rel_coord[:, 0, 0][:, None]))[:, 0]

    canvas = Image.new("RGB", (1100, 370), "white")
    draw = ImageDraw.Draw(canvas)
    title, small, tiny = font(19), font(14), font(12)
    xs = [20, 300, 870]
    y0 = 60
    panels = [(lr, f"input, {w}x{h} pixels"), (feat_rgb, "features: 64 numbers per pixel"), (out_u8, f"output x{SCALE}, {out_hw[1]}x{out_hw[0]}")]
    for x, (img, label) in zip(xs, panels):
        canvas.paste(Image.fromarray(img).resize((PANEL, PANEL), Image.NEAREST), (x, y0))
        draw.text((x, y0 - 28), label, fill="black", font=title if x != 300 else small)
    draw.text((300, y0 + PANEL + 6), "(3 of them shown as colours, by PCA)", fill=(90, 90, 90), font=tiny)

    def lr_point(x_panel, row, col, n_rows, n_cols):
        return (x_panel + (col + 0.5) * PANEL / n_cols, y0 + (row + 0.5) * PANEL / n_rows)

    # the query's position in input and feature space (continuous), and in the output
    qy = (coord[0, 0, 0] + 1) / 2 * h - 0.5
    qx = (coord[0, 0, 1] + 1) / 2 * w - 0.5
    for xp in xs[:2]:
        cx, cy = lr_point(xp, qy, qx, h, w)
        for m, (r, c) in enumerate(idx):
            px, py = lr_point(xp, r, c, h, w)
            draw.line([(cx, cy), (px, py)], fill=NEIGHBOUR_COLOURS[m], width=2)
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=NEIGHBOUR_COLOURS[m])
        draw.line([(cx - 6, cy), (cx + 6, cy)], fill="white", width=3)
        draw.line([(cx, cy - 6), (cx, cy + 6)], fill="white", width=3)
        draw.line([(cx - 5, cy), (cx + 5, cy)], fill="black", width=1)
        draw.line([(cx, cy - 5), (cx, cy + 5)], fill="black", width=1)
    ox, oy = lr_point(xs[2], QUERY[0], QUERY[1], *out_hw)
    draw.rectangle([ox - 5, oy - 5, ox + 5, oy + 5], outline="white", width=2)
    draw.rectangle([ox - 6, oy - 6, ox + 6, oy + 6], outline="black", width=1)

    def arrow(x1, x2, y, label):
        draw.line([(x1, y), (x2, y)], fill="black", width=3)
        draw.polygon([(x2, y), (x2 - 12, y - 7), (x2 - 12, y + 7)], fill="black")
        draw.text((x1 + 4, y - 22), label, fill="black", font=small)

    arrow(20 + PANEL + 6, 300 - 8, y0 + PANEL // 2, "encoder")
    draw.text((20 + PANEL + 10, y0 + PANEL // 2 + 6), "(EDSR,\n34 convs)", fill=(90, 90, 90), font=tiny)
    # the decoder box
    bx, by = 300 + PANEL + 20, y0 - 10
    draw.rounded_rectangle([bx, by, bx + 300, by + PANEL + 20], radius=10, outline="black", width=2,
                           fill=(246, 246, 246))
    draw.text((bx + 12, by + 8), "for each output pixel (+):", fill="black", font=small)
    lines = ["the 4 nearest features (3x3 each)", "+ offset from each one (rel. coord)",
             f"+ output pixel size (cell 1/{SCALE} px)", "-> MLP (4 x 256) -> 4 colours", "", "blend, weighted by closeness:"]
    for i, text in enumerate(lines):
        draw.text((bx + 12, by + 34 + 19 * i), text, fill="black", font=tiny)
    for m in range(4):
        yy = by + 34 + 19 * (len(lines) + m)
        draw.ellipse([bx + 16, yy + 3, bx + 24, yy + 11], fill=NEIGHBOUR_COLOURS[m])
        draw.text((bx + 32, yy), f"weight {weights[m]:.2f}", fill="black", font=tiny)
    arrow(bx + 300 + 6, xs[2] - 8, y0 + PANEL // 2, "")
    draw.text((20, y0 + PANEL + 40),
              "One small network answers \"what colour is here?\" for any position and pixel size, so the same model "
              "serves x1.7, x4 or x12.", fill="black", font=small)
    draw.text((20, y0 + PANEL + 62),
              "Everything drawn is computed by liif-jax with the bundled weights (docs/make_diagram.py).",
              fill=(90, 90, 90), font=tiny)
    OUT.parent.mkdir(exist_ok=True)
    canvas.save(OUT, optimize=True)
    print(f"wrote {OUT} (weights {np.round(weights, 3).tolist()}, neighbours {idx.tolist()})")


if __name__ == "__main__":
    main()
