#!/usr/bin/env python2
# -*- coding: utf-8 -*-
"""GIMP 2.10 Python-Fu: Image > Upscale (LIIF)...

Python 2.7 syntax that also parses as Python 3 (tests run it against gimpfu stubs). The work
happens in liif-jax, in another interpreter, through liif_bridge_client (installed beside
this file by 'liif-jax gimp install').

How the image is changed (liif_bridge_client.upscale_image, shared with the GIMP 3 plug-in):
every layer is upscaled by LIIF to exactly the size GIMP's own Image > Scale Image gives it
(learned on a throw-away duplicate), and only when all layers succeeded is the image scaled
and the pixels written, inside one undo group; a failure there puts the image back from a
duplicate. So any failure leaves the image as it was. With new-image the result is a new
image instead.
Layer masks and channels are scaled by GIMP itself; layer groups follow their children; text
layers become pixel layers (as with Scale Image). Python-Fu in 2.10 moves 8-bit pixels only:
higher-precision images are refused with a message (GIMP 3 has no such limit).
"""

import os
import sys

from gimpfu import (INDEXED, ORIENTATION_HORIZONTAL, PF_BOOL, PF_DRAWABLE, PF_FLOAT, PF_IMAGE, PF_INT,
                    PF_OPTION, gimp, main, pdb, register)

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


def _read(layer, box=None):
    x, y, w, h = box or (0, 0, layer.width, layer.height)
    region = layer.get_pixel_rgn(x, y, w, h, False, False)
    return region[x:x + w, y:y + h]


def _write(layer, data):
    w, h = layer.width, layer.height
    region = layer.get_pixel_rgn(0, 0, w, h, True, True)
    region[0:w, 0:h] = data
    layer.flush()
    layer.merge_shadow(True)
    layer.update(0, 0, w, h)


def _copy(src, dst):
    """Every pixel of drawable ``src`` into ``dst`` (same size and type), undoable."""
    _write(dst, _read(src))


def _guides(image):
    out, guide = [], pdb.gimp_image_find_next_guide(image, 0)
    while guide:
        out.append((guide, pdb.gimp_image_get_guide_orientation(image, guide),
                    pdb.gimp_image_get_guide_position(image, guide)))
        guide = pdb.gimp_image_find_next_guide(image, guide)
    return out


class Gimp2Host(object):
    """GIMP 2.10's side of bridge.upscale_image (see the client module for the interface)."""

    def __init__(self, folder):
        self.folder = folder

    def client(self):
        return bridge.BridgeClient.from_config(self.folder)

    def check(self, image):
        if image.base_type == INDEXED:
            raise bridge.BridgeError("indexed images are not supported: convert with Image > Mode > RGB first")
        if pdb.gimp_image_get_precision(image) not in PRECISION_8BIT:
            raise bridge.BridgeError("GIMP 2.10's Python-Fu moves 8-bit pixels only: use Image > "
                                     "Precision > 8 bit first, or GIMP 3")

    def image_size(self, image):
        return image.width, image.height

    def layers(self, image):
        return _pixel_layers(image.layers)

    def size(self, layer):
        return layer.width, layer.height

    def read(self, image, layer, box=None):
        channels = bridge.channels_for(1 if pdb.gimp_drawable_is_gray(layer) else 3,
                                       pdb.gimp_drawable_has_alpha(layer))
        x, y, w, h = box or (0, 0, layer.width, layer.height)
        return w, h, channels, "u8", _read(layer, (x, y, w, h))

    def write(self, image, layer, data):
        _write(layer, data)

    def duplicate(self, image):
        copy = pdb.gimp_image_duplicate(image)
        pdb.gimp_image_undo_disable(copy)
        return copy

    def scale(self, image, w, h):
        pdb.gimp_image_scale(image, w, h)

    def delete(self, image):
        pdb.gimp_image_delete(image)

    def undo_group_start(self, image):
        pdb.gimp_image_undo_group_start(image)

    def undo_group_end(self, image):
        pdb.gimp_image_undo_group_end(image)

    def finish_new(self, image):
        pdb.gimp_image_undo_enable(image)
        try:
            gimp.Display(image)
        except Exception:  # no display in batch mode
            pass

    def restore(self, image, backup):
        """Put ``image`` back as ``backup`` (its duplicate from before the change) was: canvas,
        layers (copies replace the scaled ones: a plug-in cannot call GIMP's undo), channels,
        selection, paths, guides; inside the undo group."""
        pdb.gimp_image_resize(image, backup.width, backup.height, 0, 0)
        for layer in list(image.layers):
            pdb.gimp_image_remove_layer(image, layer)
        for position, layer in enumerate(backup.layers):
            copy = pdb.gimp_layer_new_from_drawable(layer, image)
            pdb.gimp_image_insert_layer(image, copy, None, position)
            pdb.gimp_item_set_name(copy, pdb.gimp_item_get_name(layer))  # not "... copy"
        # merge_shadow writes only where the selection is: no selection while channels are
        # written, the selection's own pixels last.
        pdb.gimp_selection_none(image)
        for channel, original in zip(image.channels, backup.channels):
            _copy(original, channel)
        _copy(pdb.gimp_image_get_selection(backup), pdb.gimp_image_get_selection(image))
        for vectors in list(image.vectors):
            pdb.gimp_image_remove_vectors(image, vectors)
        for vectors in backup.vectors:
            text = pdb.gimp_vectors_export_to_string(backup, vectors)
            pdb.gimp_vectors_import_from_string(image, text, len(text), False, False)
        for guide, _, _ in _guides(image):
            pdb.gimp_image_delete_guide(image, guide)
        for _, orientation, position in _guides(backup):
            if orientation == ORIENTATION_HORIZONTAL:
                pdb.gimp_image_add_hguide(image, position)
            else:
                pdb.gimp_image_add_vguide(image, position)

    def progress_init(self, text):
        gimp.progress_init(text)

    def progress_update(self, fraction):
        gimp.progress_update(fraction)

    def progress_text(self, text):
        pdb.gimp_progress_set_text(text)

    def progress_end(self):
        pdb.gimp_progress_end()


def liif_upscale(image, drawable, scale, width, height, new_image, precision=0):
    """The procedure: bridge.upscale_image (the steps shared with the GIMP 3 plug-in), its
    errors turned into the exception message GIMP 2.10 shows."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        result = bridge.upscale_image(Gimp2Host(here), image, scale, width, height, new_image,
                                      bridge.PRECISION_CHOICES[precision][0])
    except bridge.Cancelled:
        raise RuntimeError("Upscale (LIIF) cancelled; the image is unchanged")
    except bridge.BridgeError as exc:
        raise RuntimeError("Upscale (LIIF): %s" % exc)
    gimp.displays_flush()
    return result


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
