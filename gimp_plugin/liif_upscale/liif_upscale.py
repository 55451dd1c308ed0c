#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""GIMP 3: Image > Upscale (LIIF)...   (procedure ``python-fu-liif-upscale``)

Runs in GIMP's own Python; the upscaling happens in liif-jax, in another interpreter, through
``liif_bridge_client`` (installed beside this file by ``liif-jax gimp install``).

What it does, like Image > Scale Image but with LIIF for every layer:
1. Work out the new size (``scale`` > 0, else ``width``/``height``, one of them 0 keeping the
   aspect ratio) and learn the size GIMP gives each layer by scaling a throw-away duplicate
   (deleted at once).
2. Read each layer's pixels through its Gegl buffer in perceptual R'G'B'(A) or Y'(A) at the
   image's precision (u8, u16; half, u32 and float images travel as float) and have liif-jax
   upscale it to exactly that size. Nothing is changed yet, so a failure or Cancel leaves
   the image exactly as it was (GIMP's Cancel kills the plug-in; liif-jax then stops the job).
3. Then, with the progress (and its Cancel) ended, in one undo group: scale the image (which
   scales masks and offsets as GIMP does; text layers become pixel layers, as with Scale
   Image) and write the LIIF pixels into every layer. With ``new-image`` a duplicate gets
   them instead, the input stays untouched, and the new image is returned (and displayed
   when interactive).
"""

import os
import sys

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # source tree
import liif_bridge_client as bridge  # noqa: E402

PROC = "python-fu-liif-upscale"


def _pixel_layers(layers):
    """Layers holding pixels, depth first (groups are walked, they follow their children)."""
    out = []
    for layer in layers:
        if layer.is_group():
            out.extend(_pixel_layers(layer.get_children()))
        else:
            out.append(layer)
    return out


def _format(image, layer):
    """(Babl format, protocol channels, protocol format) for a layer of this image.

    Pixels always travel perceptual (R'G'B'(A) / Y'(A): sRGB-encoded, what LIIF was trained
    on). u8 and u16 images stored non-linear travel at their own depth, losslessly; every
    other precision (half, u32, float, double, or a linear/perceptual TRC whose conversion
    to R'G'B' would lose bits in an integer format) travels as float.
    """
    component, trc = image.get_precision().value_nick.split("-", 1)  # "u8", "non-linear"
    if component in ("u8", "u16") and trc == "non-linear":
        pfmt, babl = component, component
    else:
        pfmt, babl = "f32", "float"
    gray = layer.is_gray()
    alpha = layer.has_alpha()
    model = ("Y'A" if alpha else "Y'") if gray else ("R'G'B'A" if alpha else "R'G'B'")
    return "%s %s" % (model, babl), bridge.channels_for(1 if gray else 3, alpha), pfmt


def _read(layer, babl):
    rect = Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height())
    return bytes(layer.get_buffer().get(rect, 1.0, babl, Gegl.AbyssPolicy.CLAMP))


def _write(layer, babl, data):
    w, h = layer.get_width(), layer.get_height()
    buffer = layer.get_shadow_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), babl, data)
    buffer.flush()
    layer.merge_shadow(True)
    layer.update(0, 0, w, h)


def _target_sizes(image, new_w, new_h):
    """The size Image > Scale Image gives each pixel layer, learned on a throw-away duplicate
    that is deleted at once (so nothing of ours is left in GIMP while liif-jax computes)."""
    work = image.duplicate()
    try:
        work.undo_disable()
        work.scale(new_w, new_h)
        return [(layer.get_width(), layer.get_height()) for layer in _pixel_layers(work.get_layers())]
    finally:
        work.delete()


def _write_all(image, results):
    layers = _pixel_layers(image.get_layers())
    for layer, (babl, data, (w, h)) in zip(layers, results):
        if (layer.get_width(), layer.get_height()) != (w, h):
            raise bridge.BridgeError("GIMP scaled a layer to %dx%d, expected %dx%d"
                                     % (layer.get_width(), layer.get_height(), w, h))
    for layer, (babl, data, _) in zip(layers, results):
        _write(layer, babl, data)


def upscale_image(image, scale, width, height, new_image, client=None, precision="auto"):
    """The procedure's work; returns the resulting image. Raises bridge.BridgeError.

    Two phases. Computing: every layer goes through liif-jax while the image is untouched and
    GIMP holds nothing of ours; this is when the progress bar, and its Cancel, are shown.
    GIMP's Cancel kills this process (gimp_plug_in_close), which closes the connection to
    liif-jax, which then stops the job. Writing: the progress has ended (no Cancel can cut it
    short), the image is scaled and every layer written, in one undo group.
    """
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise bridge.BridgeError("indexed images are not supported: convert with Image > Mode > RGB first")
    new_w, new_h = bridge.target_size(image.get_width(), image.get_height(), scale, width, height)
    here = os.path.dirname(os.path.abspath(__file__))
    client = client or bridge.BridgeClient.from_config(here)
    sizes = _target_sizes(image, new_w, new_h)
    sources = _pixel_layers(image.get_layers())
    results = []
    Gimp.progress_init("Upscale (LIIF)")
    try:
        for i, (src, size) in enumerate(zip(sources, sizes)):
            babl, channels, pfmt = _format(image, src)

            def progress(fraction, i=i):
                Gimp.progress_update((i + fraction) / float(len(sources)))

            w, h, data, _, _ = client.upscale(src.get_width(), src.get_height(), channels, pfmt,
                                              _read(src, babl), size=size, precision=precision,
                                              progress=progress, status=Gimp.progress_set_text)
            if (w, h) != size:
                raise bridge.BridgeError("liif-jax returned %dx%d, expected %dx%d" % ((w, h) + size))
            results.append((babl, data, size))
    finally:
        Gimp.progress_end()
    # Every layer computed: only now change an image.
    if new_image:
        result = image.duplicate()
        try:
            result.undo_disable()
            result.scale(new_w, new_h)
            _write_all(result, results)
            result.undo_enable()
        except BaseException:
            result.delete()
            raise
        return result
    image.undo_group_start()
    try:
        image.scale(new_w, new_h)
        _write_all(image, results)
    finally:
        image.undo_group_end()
    return image


class LiifUpscale(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE
                                       | Gimp.ProcedureSensitivityMask.DRAWABLES
                                       | Gimp.ProcedureSensitivityMask.NO_DRAWABLES)
        procedure.set_menu_label("Upscale (_LIIF)…")
        procedure.add_menu_path("<Image>/Image")
        procedure.set_documentation(
            "Upscale the image with LIIF (learned arbitrary-scale super-resolution)",
            "Resizes the whole image like Image > Scale Image, every layer upscaled by LIIF "
            "(Local Implicit Image Function, CVPR 2021) through liif-jax. scale > 0 sets the "
            "factor; scale 0 uses width and height (one of them 0 keeps the aspect ratio). "
            "new-image leaves the input untouched and returns a new image.", name)
        procedure.set_attribution("liif-jax contributors", "MIT", "2026")
        flags = GObject.ParamFlags.READWRITE
        # Mnemonics chosen not to clash with the dialog's own _Save Settings, _Help, _OK, ...
        procedure.add_double_argument("scale", "Sc_ale", "Scale factor (0 = use width and height)",
                                      0.0, 64.0, 2.0, flags)
        procedure.add_int_argument("width", "_Width", "New width in pixels (0 = keep aspect ratio)",
                                   0, 524288, 0, flags)
        procedure.add_int_argument("height", "H_eight", "New height in pixels (0 = keep aspect ratio)",
                                   0, 524288, 0, flags)
        procedure.add_boolean_argument("new-image", "New _image", "Open the result as a new image",
                                       False, flags)
        choice = Gimp.Choice.new()
        for i, (value, label) in enumerate(bridge.PRECISION_CHOICES):
            choice.add(value, i, label, "")
        procedure.add_choice_argument(
            "precision", "_Precision",
            "Exact (float32) matches the authors' model; fast (bfloat16) is within 2/255 of it "
            "and much faster on GPUs and on CPUs with native bfloat16 (AVX512_BF16, AMX)",
            choice, "auto", flags)
        procedure.add_image_return_value("result", "Result",
                                         "The upscaled image (the input itself unless new-image)",
                                         True, flags)
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, run_data):
        if run_mode == Gimp.RunMode.INTERACTIVE:
            gi.require_version("GimpUi", "3.0")
            from gi.repository import GimpUi

            GimpUi.init(PROC)
            dialog = GimpUi.ProcedureDialog.new(procedure, config, "Upscale (LIIF)")
            dialog.fill(None)
            if not dialog.run():
                dialog.destroy()
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
            dialog.destroy()
        try:
            result = upscale_image(image, config.get_property("scale"), config.get_property("width"),
                                   config.get_property("height"), config.get_property("new-image"),
                                   precision=config.get_property("precision"))
        except bridge.Cancelled:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        except Exception as exc:  # an uncaught exception would reach the caller without its message
            message = str(exc) if isinstance(exc, bridge.BridgeError) else "%s: %s" % (type(exc).__name__, exc)
            return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR,
                                               GLib.Error("Upscale (LIIF): %s" % message))
        if result is not image and run_mode == Gimp.RunMode.INTERACTIVE:
            Gimp.Display.new(result)  # (there is no display in batch mode)
        Gimp.displays_flush()
        values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
        values.remove(1)
        values.insert(1, GObject.Value(Gimp.Image, result))
        return values


Gimp.main(LiifUpscale.__gtype__, sys.argv)
