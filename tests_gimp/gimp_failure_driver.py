# Runs inside headless GIMP 3 (python-fu-eval), driven by test_real_gimp.py with
# LIIF_JAX_TEST_FAIL_AFTER_SCALE=1: the plug-in fails right after image.scale(), inside its
# undo group (issue 11, item 8). Builds an image with everything Scale Image changes (a group
# with an offset child and a mask, a custom channel, a selection, a path, guides), records its
# whole state, runs python-fu-liif-upscale in place, records the state again; the test
# compares the two. LIIF_TEST_OUT gets report.json.
import json
import os
import sys

from gi.repository import Gegl, Gimp, Gio

sys.path.insert(0, "/liif-work/liif-test")  # gimp_helpers.py, copied there by the tests
from gimp_helpers import put, run_plugin, state  # noqa: E402

NI = Gimp.RunMode.NONINTERACTIVE


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
