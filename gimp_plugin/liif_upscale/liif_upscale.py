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
gi.require_version("Babl", "0.1")
from gi.repository import Babl, Gegl, Gimp, GLib, GObject  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # source tree
import liif_bridge_client as bridge  # noqa: E402

PROC = "python-fu-liif-upscale"
PROC_LAYER = "python-fu-liif-upscale-layer"
HERE = os.path.dirname(os.path.abspath(__file__))


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


def _read(layer, babl, box=None):
    rect = Gegl.Rectangle.new(*(box or (0, 0, layer.get_width(), layer.get_height())))
    return bytes(layer.get_buffer().get(rect, 1.0, babl, Gegl.AbyssPolicy.CLAMP))


def _write(layer, babl, data):
    w, h = layer.get_width(), layer.get_height()
    buffer = layer.get_shadow_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), babl, data)
    buffer.flush()
    layer.merge_shadow(True)
    layer.update(0, 0, w, h)


def _tree_index(layers, wanted):
    """Index paths (e.g. (1, 0): second top-level layer's first child) of ``wanted`` layers."""
    out = []
    for i, layer in enumerate(layers):
        if layer in wanted:
            out.append((i,))
        if layer.is_group():
            out.extend((i,) + sub for sub in _tree_index(layer.get_children(), wanted))
    return out


def _by_index(layers, index):
    layer = layers[index[0]]
    return layer if len(index) == 1 else _by_index(layer.get_children(), index[1:])


def _copy_pixels(src, dst):
    """Every pixel of drawable ``src`` into ``dst`` (same size), undoable, in dst's format."""
    babl = Babl.get_name(dst.get_format())
    rect = Gegl.Rectangle.new(0, 0, dst.get_width(), dst.get_height())
    data = src.get_buffer().get(rect, 1.0, babl, Gegl.AbyssPolicy.NONE)
    shadow = dst.get_shadow_buffer()
    shadow.set(rect, babl, data)
    shadow.flush()
    dst.merge_shadow(True)
    dst.update(0, 0, dst.get_width(), dst.get_height())


def _guides(image):
    out, guide = [], image.find_next_guide(0)
    while guide:
        out.append((guide, image.get_guide_orientation(guide), image.get_guide_position(guide)))
        guide = image.find_next_guide(guide)
    return out


class Gimp3Host(object):
    """GIMP 3's side of bridge.upscale_image (see the client module for the interface)."""

    def __init__(self, client=None):
        self._client = client

    def client(self):
        return self._client or bridge.BridgeClient.from_config(os.path.dirname(os.path.abspath(__file__)))

    def check(self, image):
        if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
            raise bridge.BridgeError("indexed images are not supported: convert with Image > Mode > RGB first")

    def image_size(self, image):
        return image.get_width(), image.get_height()

    def layers(self, image):
        return _pixel_layers(image.get_layers())

    def size(self, layer):
        return layer.get_width(), layer.get_height()

    def read(self, image, layer, box=None):
        babl, channels, pfmt = _format(image, layer)
        x, y, w, h = box or (0, 0, layer.get_width(), layer.get_height())
        return w, h, channels, pfmt, _read(layer, babl, (x, y, w, h))

    def write(self, image, layer, data):
        _write(layer, _format(image, layer)[0], data)

    def duplicate(self, image):
        copy = image.duplicate()
        copy.undo_disable()
        return copy

    def scale(self, image, w, h):
        image.scale(w, h)

    def delete(self, image):
        image.delete()

    def undo_group_start(self, image):
        image.undo_group_start()

    def undo_group_end(self, image):
        image.undo_group_end()

    def finish_new(self, image):
        image.undo_enable()

    def restore(self, image, backup):
        """Put ``image`` back as ``backup`` (its duplicate from before the change) was: canvas
        size, layers (groups, masks, offsets, modes, text), channels, selection, paths and
        guides. Scaled layers are replaced by copies, since a plug-in cannot call GIMP's undo;
        this happens inside the undo group, so one Ctrl+Z still takes the whole attempt away."""
        image.resize(backup.get_width(), backup.get_height(), 0, 0)
        selected = _tree_index(backup.get_layers(), backup.get_selected_layers())
        for layer in image.get_layers():
            image.remove_layer(layer)
        for position, layer in enumerate(backup.get_layers()):
            copy = Gimp.Layer.new_from_drawable(layer, image)
            image.insert_layer(copy, None, position)
            copy.set_name(layer.get_name())  # new_from_drawable appends " copy"
        if selected:
            image.set_selected_layers([_by_index(image.get_layers(), i) for i in selected])
        # merge_shadow writes only where the selection is: no selection while channels are
        # written, the selection's own pixels last.
        Gimp.Selection.none(image)
        for channel, original in zip(image.get_channels(), backup.get_channels()):
            _copy_pixels(original, channel)
        _copy_pixels(backup.get_selection(), image.get_selection())
        for path in image.get_paths():
            image.remove_path(path)
        if backup.get_paths():
            text = backup.export_path_to_string(None)
            image.import_paths_from_string(text, len(text.encode("utf-8")), False, False)
        for guide, _, _ in _guides(image):
            image.delete_guide(guide)
        for _, orientation, position in _guides(backup):
            if orientation == Gimp.OrientationType.HORIZONTAL:
                image.add_hguide(position)
            else:
                image.add_vguide(position)

    # -- the layer command
    def is_group(self, layer):
        return layer.is_group()

    def selection_box(self, image, layer):
        _, non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
        if not non_empty:
            return None
        _, ox, oy = layer.get_offsets()
        x1, y1 = max(x1 - ox, 0), max(y1 - oy, 0)
        x2, y2 = min(x2 - ox, layer.get_width()), min(y2 - oy, layer.get_height())
        return (x1, y1, x2 - x1, y2 - y1) if x2 > x1 and y2 > y1 else None

    def new_image(self, image, layer, w, h, data):
        result = Gimp.Image.new_with_precision(w, h, image.get_base_type(), image.get_precision())
        profile = image.get_color_profile()
        if profile is not None:
            result.set_color_profile(profile)
        copy = Gimp.Layer.new(result, layer.get_name(), w, h, layer.type(), 100.0, Gimp.LayerMode.NORMAL)
        result.insert_layer(copy, None, 0)
        result.undo_disable()  # a new image starts with no undo steps
        _write(copy, _format(result, copy)[0], data)
        result.undo_enable()
        return result

    def copy_layer(self, layer):
        return layer.copy()

    def scale_layer(self, layer, w, h):
        layer.scale(w, h, True)  # local origin: around its centre, as Layer > Scale Layer

    def restore_layer(self, image, layer, copy):
        parent, position, name = layer.get_parent(), image.get_item_position(layer), layer.get_name()
        image.remove_layer(layer)
        image.insert_layer(copy, parent, position)
        copy.set_name(name)  # a copy is named "... copy"
        image.set_selected_layers([copy])

    def delete_layer(self, copy):
        copy.delete()

    def progress_init(self, text):
        Gimp.progress_init(text)

    def progress_update(self, fraction):
        Gimp.progress_update(fraction)

    def progress_text(self, text):
        Gimp.progress_set_text(text)

    def progress_end(self):
        Gimp.progress_end()


def upscale_image(image, scale, width, height, new_image, client=None, precision="auto"):
    """The procedure's work (bridge.upscale_image, shared with the GIMP 2.10 plug-in);
    returns the resulting image. Raises bridge.BridgeError.

    Two phases. Computing: every layer goes through liif-jax while the image is untouched and
    GIMP holds nothing of ours; this is when the progress bar, and its Cancel, are shown.
    GIMP's Cancel kills this process (gimp_plug_in_close), which closes the connection to
    liif-jax, which then stops the job. Writing: the progress has ended (no Cancel can cut it
    short), the image is scaled and every layer written, in one undo group; a failure there
    puts the image back as it was.
    """
    return bridge.upscale_image(Gimp3Host(client), image, scale, width, height, new_image, precision)


def upscale_layer(image, layer, scale, width, height, selection_only, client=None, precision="auto"):
    """Layer > Upscale Layer (LIIF) (bridge.upscale_layer, shared with no one yet: GIMP 2.10
    has only the image command)."""
    return bridge.upscale_layer(Gimp3Host(client), image, layer, scale, width, height, precision,
                                selection_only)


def _add_size_arguments(procedure, flags):
    # Mnemonics chosen not to clash with the dialog's own _Save Settings, _Help, _OK, ...
    procedure.add_double_argument("scale", "Sc_ale", "Scale factor (0 = use width and height)",
                                  0.0, 64.0, 2.0, flags)
    procedure.add_int_argument("width", "_Width", "New width in pixels (0 = keep the aspect ratio)",
                               0, 524288, 0, flags)
    procedure.add_int_argument("height", "H_eight", "New height in pixels (0 = keep the aspect ratio)",
                               0, 524288, 0, flags)


def _add_precision_argument(procedure, flags):
    choice = Gimp.Choice.new()
    for i, (value, label) in enumerate(bridge.PRECISION_CHOICES):
        choice.add(value, i, label, "")
    procedure.add_choice_argument(
        "precision", "_Precision",
        "Exact (float32) matches the authors' model; fast (bfloat16) is within 2/255 of it, "
        "the default on GPU/TPU, and faster on CPUs with native bfloat16 (AVX512_BF16, AMX)",
        choice, "auto", flags)


def _dialog(procedure, config, title, source_size, extra):
    """The procedure's dialog, with what a user decides by: the resulting size in pixels
    (updated as the arguments change; ``source_size(config)`` gives the size it starts from),
    the aspect-ratio rule, and which weights the filter uses. True on OK."""
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    GimpUi.init(procedure.get_name())
    dialog = GimpUi.ProcedureDialog.new(procedure, config, title)
    dialog.get_label("aspect-hint", bridge.ASPECT_HINT, False, False)
    result = dialog.get_label("result-size", "", False, False)
    dialog.get_label("weights", bridge.weights_text(HERE), False, False)

    def update(*_):
        w, h = source_size(config)
        text = bridge.result_text(w, h, config.get_property("scale"), config.get_property("width"),
                                  config.get_property("height"))
        result.set_text(text)
        bridge._log_event({"event": "dialog", "result": text})  # with $LIIF_JAX_EVENTS: what it shows

    handler = config.connect("notify", update)
    update()
    dialog.fill(["scale", "width", "height", "aspect-hint", "result-size"] + extra + ["precision", "weights"])
    ok = dialog.run()
    config.disconnect(handler)
    dialog.destroy()
    return ok


def _failure(procedure, exc):
    if isinstance(exc, bridge.Cancelled):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    # an uncaught exception would reach the caller without its message
    message = str(exc) if isinstance(exc, bridge.BridgeError) else "%s: %s" % (type(exc).__name__, exc)
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR,
                                       GLib.Error("Upscale (LIIF): %s" % message))


def _success(procedure, result, image, run_mode):
    if result is not image and run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.Display.new(result)  # (there is no display in batch mode)
    Gimp.displays_flush()
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    values.remove(1)
    values.insert(1, GObject.Value(Gimp.Image, result))
    return values


class LiifUpscale(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC, PROC_LAYER]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        if name == PROC_LAYER:
            return self.create_layer_procedure(name)
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
        _add_size_arguments(procedure, flags)
        procedure.add_boolean_argument("new-image", "New _image", "Open the result as a new image",
                                       False, flags)
        _add_precision_argument(procedure, flags)
        procedure.add_image_return_value("result", "Result",
                                         "The upscaled image (the input itself unless new-image)",
                                         True, flags)
        return procedure

    def create_layer_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run_layer, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label("Upscale Layer (_LIIF)…")
        procedure.add_menu_path("<Image>/Layer")
        procedure.set_documentation(
            "Upscale the selected layer with LIIF (learned arbitrary-scale super-resolution)",
            "Resizes one layer like Layer > Scale Layer (around its centre; the canvas stays), "
            "its pixels upscaled by LIIF through liif-jax. scale > 0 sets the factor; scale 0 "
            "uses width and height (one of them 0 keeps the aspect ratio). selection-only "
            "upscales the selection's bounds within the layer into a new image instead, "
            "leaving the input untouched.", name)
        procedure.set_attribution("liif-jax contributors", "MIT", "2026")
        flags = GObject.ParamFlags.READWRITE
        _add_size_arguments(procedure, flags)
        procedure.add_boolean_argument("selection-only", "Only the _selection, as a new image",
                                       "Upscale the selection's bounds within the layer into a new image",
                                       False, flags)
        _add_precision_argument(procedure, flags)
        procedure.add_image_return_value("result", "Result",
                                         "The image of the layer, or the new image (selection-only)",
                                         True, flags)
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, run_data):
        if run_mode == Gimp.RunMode.INTERACTIVE:
            if not _dialog(procedure, config, "Upscale (LIIF)",
                           lambda config: (image.get_width(), image.get_height()), ["new-image"]):
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        try:
            result = upscale_image(image, config.get_property("scale"), config.get_property("width"),
                                   config.get_property("height"), config.get_property("new-image"),
                                   precision=config.get_property("precision"))
        except Exception as exc:
            return _failure(procedure, exc)
        return _success(procedure, result, image, run_mode)

    def run_layer(self, procedure, run_mode, image, drawables, config, run_data):
        if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
            return _failure(procedure, bridge.BridgeError("select exactly one layer"))
        layer = drawables[0]
        if run_mode == Gimp.RunMode.INTERACTIVE:
            host = Gimp3Host()

            def source_size(config):
                box = host.selection_box(image, layer) if config.get_property("selection-only") else None
                return box[2:] if box else (layer.get_width(), layer.get_height())

            # The selection option only where there is a selection to use.
            extra = ["selection-only"] if host.selection_box(image, layer) else []
            if not extra:
                config.set_property("selection-only", False)
            if not _dialog(procedure, config, "Upscale Layer (LIIF)", source_size, extra):
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        try:
            result = upscale_layer(image, layer, config.get_property("scale"), config.get_property("width"),
                                   config.get_property("height"), config.get_property("selection-only"),
                                   precision=config.get_property("precision"))
        except Exception as exc:
            return _failure(procedure, exc)
        return _success(procedure, result, image, run_mode)


Gimp.main(LiifUpscale.__gtype__, sys.argv)
