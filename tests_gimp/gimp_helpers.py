# Helpers the drivers share, imported inside GIMP's python-fu-eval (a driver puts
# /liif-work/liif-test, where the `work` fixture of test_real_gimp.py copies this file, on
# sys.path): pixels in and out of Gegl buffers, raw dumps to LIIF_TEST_OUT, and one
# non-interactive run of python-fu-liif-upscale.
import hashlib
import os

import gi

gi.require_version("Babl", "0.1")
from gi.repository import Babl, Gegl, Gimp  # noqa: E402


def raw(drawable, fmt="R'G'B' u8"):
    rect = Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height())
    return bytes(drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP))


def put(drawable, fmt, data):
    buf = drawable.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height()), fmt, data)
    buf.flush()
    drawable.update(0, 0, drawable.get_width(), drawable.get_height())


def dump(name, data):
    with open(os.path.join(os.environ["LIIF_TEST_OUT"], name), "wb") as f:
        f.write(data)


def run_plugin(image, scale):
    """(status nick, error message or "") of python-fu-liif-upscale on ``image`` at ``scale``."""
    proc = Gimp.get_pdb().lookup_procedure("python-fu-liif-upscale")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", image.get_selected_drawables())
    config.set_property("scale", scale)
    result = proc.run(config)
    status = result.index(0)
    message = str(result.index(1)) if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1 else ""
    return status.value_nick, message


def run_procedure(name, image, drawables, **arguments):
    """(status nick, error message or "", result image or None) of procedure ``name`` run
    NONINTERACTIVE on ``image`` with ``drawables`` and the given arguments (dashes as _)."""
    proc = Gimp.get_pdb().lookup_procedure(name)
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", drawables)
    for key, value in arguments.items():
        config.set_property(key.replace("_", "-"), value)
    result = proc.run(config)
    status = result.index(0)
    ok = status == Gimp.PDBStatusType.SUCCESS
    message = str(result.index(1)) if not ok and result.length() > 1 else ""
    return status.value_nick, message, result.index(1) if ok else None


# -- the whole state of an image, to prove a failed run left it exactly as it was

def pixels(drawable):
    """sha256 of every pixel in the drawable's own storage format (exact, any precision)."""
    babl = Babl.get_name(drawable.get_format())
    rect = Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height())
    data = bytes(drawable.get_buffer().get(rect, 1.0, babl, Gegl.AbyssPolicy.NONE))
    return babl + " " + hashlib.sha256(data).hexdigest()


def layer_state(layers):
    out = []
    for layer in layers:
        _, x, y = layer.get_offsets()
        entry = {"name": layer.get_name(), "size": [layer.get_width(), layer.get_height()], "offsets": [x, y],
                 "opacity": layer.get_opacity(), "mode": layer.get_mode().value_nick,
                 "visible": layer.get_visible(), "group": layer.is_group()}
        if layer.is_group():
            entry["children"] = layer_state(layer.get_children())
        else:
            entry["pixels"] = pixels(layer)
            mask = layer.get_mask()
            entry["mask"] = pixels(mask) if mask else None
        out.append(entry)
    return out


def guides(image):
    out, guide = [], image.find_next_guide(0)
    while guide:
        out.append([image.get_guide_orientation(guide).value_nick, image.get_guide_position(guide)])
        guide = image.find_next_guide(guide)
    return sorted(out)


def state(image):
    return {"size": [image.get_width(), image.get_height()], "layers": layer_state(image.get_layers()),
            "selected": [layer.get_name() for layer in image.get_selected_layers()],
            "channels": [[c.get_name(), pixels(c)] for c in image.get_channels()],
            "selection": pixels(image.get_selection()),
            "paths": image.export_path_to_string(None) if image.get_paths() else "",
            "guides": guides(image), "precision": image.get_precision().value_nick}
