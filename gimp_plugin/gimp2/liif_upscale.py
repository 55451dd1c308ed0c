#!/usr/bin/env python2
# -*- coding: utf-8 -*-
"""GIMP 2.10 Python-Fu: Image > Upscale (LIIF)...

Python 2.7 syntax that also parses as Python 3 (tests run it against gimpfu stubs). The work
happens in liif-jax, in another interpreter, through liif_bridge_client (installed beside
this file by 'liif-jax gimp install').

How the image is changed: every layer is upscaled by LIIF to exactly the size GIMP's own
Image > Scale Image gives it (learned on a throw-away duplicate), and only when all layers
succeeded is the image scaled and the pixels written, inside one undo group. So any failure
leaves the image exactly as it was. With new-image the result is a new image instead.
Layer masks and channels are scaled by GIMP itself; layer groups follow their children; text
layers become pixel layers (as with Scale Image). Python-Fu in 2.10 moves 8-bit pixels only:
higher-precision images are refused with a message (GIMP 3 has no such limit).
"""

import os
import sys

from gimpfu import (INDEXED, PF_BOOL, PF_DRAWABLE, PF_FLOAT, PF_IMAGE, PF_INT, PF_OPTION, gimp,
                    main, pdb, register)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import liif_bridge_client as bridge  # noqa: E402

PRECISION_8BIT = (100, 150)  # GIMP_PRECISION_U8_LINEAR, GIMP_PRECISION_U8_NON_LINEAR


def _pixel_layers(layers):
    """Layers that hold pixels, depth first, in a stable order (groups are walked)."""
    out = []
    for layer in layers:
        children = getattr(layer, "children", None)
        if children is not None and pdb.gimp_item_is_group(layer):
            out.extend(_pixel_layers(children))
        else:
            out.append(layer)
    return out


def _read(layer):
    w, h = layer.width, layer.height
    region = layer.get_pixel_rgn(0, 0, w, h, False, False)
    return region[0:w, 0:h]


def _write(layer, data):
    w, h = layer.width, layer.height
    region = layer.get_pixel_rgn(0, 0, w, h, True, True)
    region[0:w, 0:h] = data
    layer.flush()
    layer.merge_shadow(True)
    layer.update(0, 0, w, h)


def liif_upscale(image, drawable, scale, width, height, new_image, precision=0):
    here = os.path.dirname(os.path.abspath(__file__))
    work = None
    try:
        if image.base_type == INDEXED:
            raise bridge.BridgeError("indexed images are not supported: convert with Image > Mode > RGB first")
        if pdb.gimp_image_get_precision(image) not in PRECISION_8BIT:
            raise bridge.BridgeError("GIMP 2.10's Python-Fu moves 8-bit pixels only: use Image > "
                                     "Precision > 8 bit first, or GIMP 3")
        new_w, new_h = bridge.target_size(image.width, image.height, scale, width, height)
        client = bridge.BridgeClient.from_config(here)
        gimp.progress_init("Upscale (LIIF)")
        # Learn GIMP's own layer sizes for this scale on a duplicate (offsets, rounding).
        work = pdb.gimp_image_duplicate(image)
        pdb.gimp_image_undo_disable(work)
        pdb.gimp_image_scale(work, new_w, new_h)
        sources, targets = _pixel_layers(image.layers), _pixel_layers(work.layers)
        results = []
        for i, (src, dst) in enumerate(zip(sources, targets)):
            channels = bridge.channels_for(1 if pdb.gimp_drawable_is_gray(src) else 3,
                                           pdb.gimp_drawable_has_alpha(src))

            def progress(fraction, i=i):
                gimp.progress_update((i + fraction) / float(len(sources)))

            rw, rh, data, _, _ = client.upscale(src.width, src.height, channels, "u8", _read(src),
                                                size=(dst.width, dst.height), progress=progress,
                                                status=pdb.gimp_progress_set_text,
                                                precision=bridge.PRECISION_CHOICES[precision][0])
            if (rw, rh) != (dst.width, dst.height):
                raise bridge.BridgeError("liif-jax returned %dx%d, expected %dx%d" % (rw, rh, dst.width, dst.height))
            results.append(data)
        # Everything computed: now change an image.
        if new_image:
            for dst, data in zip(targets, results):
                _write(dst, data)
            pdb.gimp_image_undo_enable(work)
            result, work = work, None
            try:
                gimp.Display(result)
            except Exception:  # no display in batch mode
                pass
            return result
        pdb.gimp_image_undo_group_start(image)
        try:
            pdb.gimp_image_scale(image, new_w, new_h)
            for layer, data in zip(_pixel_layers(image.layers), results):
                _write(layer, data)
        finally:
            pdb.gimp_image_undo_group_end(image)
        gimp.displays_flush()
        return image
    except bridge.Cancelled:
        raise RuntimeError("Upscale (LIIF) cancelled; the image is unchanged")
    except bridge.BridgeError as exc:
        raise RuntimeError("Upscale (LIIF): %s" % exc)
    finally:
        if work is not None:
            pdb.gimp_image_delete(work)


register(
    "python-fu-liif-upscale",
    "Upscale the image with LIIF (learned arbitrary-scale super-resolution)",
    "Resizes the whole image like Image > Scale Image, every layer upscaled by LIIF "
    "(Local Implicit Image Function, CVPR 2021) through liif-jax. scale > 0 sets the factor; "
    "scale 0 uses width and height (one of them 0 keeps the aspect ratio).",
    "liif-jax contributors", "MIT", "2026",
    "Upscale (LIIF)...",
    "RGB*, GRAY*",
    [
        (PF_IMAGE, "image", "Input image", None),
        (PF_DRAWABLE, "drawable", "Input drawable (unused: every layer is upscaled)", None),
        (PF_FLOAT, "scale", "Scale factor (0 = use width and height)", 2.0),
        (PF_INT, "width", "New width in pixels (0 = keep aspect ratio)", 0),
        (PF_INT, "height", "New height in pixels (0 = keep aspect ratio)", 0),
        (PF_BOOL, "new-image", "Open the result as a new image", False),
        (PF_OPTION, "precision", "Precision", 0, [label for _, label in bridge.PRECISION_CHOICES]),
    ],
    [(PF_IMAGE, "result", "The upscaled image (the input itself unless new-image)")],
    liif_upscale,
    menu="<Image>/Image",
)

main()
