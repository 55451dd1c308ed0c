# Runs inside headless GIMP 3 (python-fu-eval), driven by test_real_gimp.py with
# LIIF_JAX_TEST_FAIL_AFTER_SCALE=1: the plug-in fails right after image.scale(), inside its
# undo group (issue 11, item 8). Builds an image with everything Scale Image changes (a group
# with an offset child and a mask, a custom channel, a selection, a path, guides), records its
# whole state, runs python-fu-liif-upscale in place, records the state again; the test
# compares the two. LIIF_TEST_OUT gets report.json.
import hashlib
import json
import os
import sys

import gi

gi.require_version("Babl", "0.1")
from gi.repository import Babl, Gegl, Gimp, Gio  # noqa: E402

sys.path.insert(0, "/liif-work/liif-test")  # gimp_helpers.py, copied there by the tests
from gimp_helpers import put, run_plugin  # noqa: E402

NI = Gimp.RunMode.NONINTERACTIVE


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


img = Gimp.file_load(NI, Gio.File.new_for_path(os.environ["LIIF_TEST_RGB"]))
group = Gimp.GroupLayer.new(img, "group")
img.insert_layer(group, None, 0)
child = Gimp.Layer.new(img, "child", 10, 8, Gimp.ImageType.RGBA_IMAGE, 80.0, Gimp.LayerMode.MULTIPLY)
img.insert_layer(child, group, 0)
child.set_offsets(5, 3)
put(child, "R'G'B'A u8", bytes((x * 7 + y * 13 + c * 29) % 256 for y in range(8) for x in range(10) for c in range(4)))
mask = child.create_mask(Gimp.AddMaskType.WHITE)
child.add_mask(mask)
put(mask, "Y u8", bytes((x * 25 + y * 3) % 256 for y in range(8) for x in range(10)))
channel = Gimp.Channel.new(img, "saved", 32, 32, 50.0, Gegl.Color.new("red"))
img.insert_channel(channel, None, 0)
put(channel, "Y u8", bytes((x * 8 + y) % 256 for y in range(32) for x in range(32)))
path = Gimp.Path.new(img, "outline")
img.insert_path(path, None, 0)
stroke = path.bezier_stroke_new_moveto(3, 4)
path.bezier_stroke_lineto(stroke, 20, 6)
path.bezier_stroke_lineto(stroke, 11, 27)
img.add_hguide(10)
img.add_vguide(7)
img.select_rectangle(Gimp.ChannelOps.REPLACE, 4, 6, 13, 9)
img.set_selected_layers([child])

before = state(img)
status, message = run_plugin(img, 2.5)
after = state(img)
with open(os.path.join(os.environ["LIIF_TEST_OUT"], "report.json"), "w") as f:
    json.dump({"status": status, "message": message, "before": before, "after": after}, f)
