# Runs inside headless GIMP 3 (python-fu-eval), driven by test_real_gimp.py: builds images
# with a layer group, offsets and a mask, 16-bit and gray precisions, and an indexed image;
# runs python-fu-liif-upscale in place on each; dumps raw layer bytes before and after and a
# JSON report to LIIF_TEST_OUT.
import json
import os
import struct

from gi.repository import Gimp, Gio

import sys

sys.path.insert(0, "/liif-work/liif-test")  # gimp_helpers.py, copied there by the tests
from gimp_helpers import dump, put, raw, run_plugin as run  # noqa: E402

NI = Gimp.RunMode.NONINTERACTIVE
OUT = os.environ["LIIF_TEST_OUT"]
report = {}


def describe(layers):
    out = []
    for layer in layers:
        _, x, y = layer.get_offsets()
        entry = {"name": layer.get_name(), "size": [layer.get_width(), layer.get_height()],
                 "offsets": [x, y], "group": layer.is_group()}
        if not layer.is_group():
            mask = layer.get_mask()
            entry["mask"] = [mask.get_width(), mask.get_height()] if mask else None
        else:
            entry["children"] = describe(layer.get_children())
        out.append(entry)
    return out


def pattern(w, h, channels, maxval, seed):
    vals = []
    for y in range(h):
        for x in range(w):
            for c in range(channels):
                if c == channels - 1 and channels in (2, 4):
                    vals.append(maxval)  # opaque
                else:
                    v = (x * (37 + 11 * c) + y * (23 + 5 * c) + seed * 7) % 97 / 96.0
                    vals.append(int(v * maxval))
    return vals


# 1. a group with an offset child and a mask, over a background loaded from a file
img = Gimp.file_load(NI, Gio.File.new_for_path(os.environ["LIIF_TEST_RGB"]))
background = img.get_layers()[0]
group = Gimp.GroupLayer.new(img, "group")
img.insert_layer(group, None, 0)
child = Gimp.Layer.new(img, "child", 10, 8, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
img.insert_layer(child, group, 0)
child.set_offsets(5, 3)
put(child, "R'G'B'A u8", bytes(pattern(10, 8, 4, 255, 1)))
child.add_mask(child.create_mask(Gimp.AddMaskType.WHITE))
dump("group_child_before.raw", raw(child, "R'G'B'A u8"))
dump("group_bg_before.raw", raw(background, "R'G'B' u8"))
status, message = run(img, 2.0)
report["group"] = {"status": status, "message": message, "image": [img.get_width(), img.get_height()],
                   "layers": describe(img.get_layers())}
dump("group_child_after.raw", raw(child, "R'G'B'A u8"))
dump("group_bg_after.raw", raw(background, "R'G'B' u8"))

# 2. 16-bit
img16 = Gimp.Image.new_with_precision(24, 20, Gimp.ImageBaseType.RGB, Gimp.Precision.U16_NON_LINEAR)
layer16 = Gimp.Layer.new(img16, "u16", 24, 20, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
img16.insert_layer(layer16, None, 0)
put(layer16, "R'G'B' u16", struct.pack("<%dH" % (24 * 20 * 3), *pattern(24, 20, 3, 65535, 2)))
dump("u16_before.raw", raw(layer16, "R'G'B' u16"))
status, message = run(img16, 2.0)
report["u16"] = {"status": status, "message": message, "image": [img16.get_width(), img16.get_height()],
                 "precision": img16.get_precision().value_nick}
dump("u16_after.raw", raw(layer16, "R'G'B' u16"))

# 3. gray with alpha
imgg = Gimp.Image.new(20, 16, Gimp.ImageBaseType.GRAY)
layerg = Gimp.Layer.new(imgg, "gray", 20, 16, Gimp.ImageType.GRAYA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
imgg.insert_layer(layerg, None, 0)
put(layerg, "Y'A u8", bytes(pattern(20, 16, 2, 255, 3)))
dump("gray_before.raw", raw(layerg, "Y'A u8"))
status, message = run(imgg, 1.5)
report["gray"] = {"status": status, "message": message, "image": [imgg.get_width(), imgg.get_height()],
                  "base": imgg.get_base_type().value_nick}
dump("gray_after.raw", raw(layerg, "Y'A u8"))

# 4. indexed: refused, untouched
imgi = Gimp.file_load(NI, Gio.File.new_for_path(os.environ["LIIF_TEST_RGB"]))
imgi.convert_indexed(Gimp.ConvertDitherType.NONE, Gimp.ConvertPaletteType.GENERATE, 16, False, False, "")
status, message = run(imgi, 2.0)
report["indexed"] = {"status": status, "message": message, "image": [imgi.get_width(), imgi.get_height()],
                     "base": imgi.get_base_type().value_nick}

with open(os.path.join(OUT, "report.json"), "w") as f:
    json.dump(report, f)
