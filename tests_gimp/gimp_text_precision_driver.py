# Runs inside headless GIMP 3 (python-fu-eval, started with fonts: LIIF_GIMP_FONTS=1), driven
# by test_real_gimp.py: a text layer, and images of half, u32 and float precision, each run
# through python-fu-liif-upscale in place. For the text layer it also records what GIMP's own
# Image > Scale Image does to the same layer (on a duplicate). Raw pixels before and after
# (in the float format the plug-in moves them in) and a JSON report go to LIIF_TEST_OUT.
import json
import math
import os
import struct

from gi.repository import Gimp, Gio

import sys

sys.path.insert(0, "/liif-work/liif-test")  # gimp_helpers.py, copied there by the tests
from gimp_helpers import dump, put, raw, run_plugin as run  # noqa: E402

NI = Gimp.RunMode.NONINTERACTIVE
OUT = os.environ["LIIF_TEST_OUT"]
report = {}


def describe(layer):
    _, x, y = layer.get_offsets()
    # (Not the Python type: libgimp keeps the proxy it made first, a TextLayer, for the same id.)
    return {"is_text_layer": layer.is_text_layer(), "size": [layer.get_width(), layer.get_height()],
            "offsets": [x, y], "alpha": layer.has_alpha()}


# 1. A text layer over a background. First what Scale Image does to it, then the plug-in.
img = Gimp.file_load(NI, Gio.File.new_for_path(os.environ["LIIF_TEST_RGB"]))  # 32x32
text = Gimp.TextLayer.new(img, "LIIF", Gimp.context_get_font(), 14.0, Gimp.Unit.pixel())
img.insert_layer(text, None, 0)
text.set_offsets(3, 5)
before = describe(text)
dump("text_before.raw", raw(text, "R'G'B'A u8"))
reference = img.duplicate()
reference.scale(80, 80)  # what Image > Scale Image gives at x2.5
scaled_by_gimp = describe(reference.get_layers()[0])
reference.delete()
status, message = run(img, 2.5)
report["text"] = {"status": status, "message": message, "image": [img.get_width(), img.get_height()],
                  "layers": len(img.get_layers()), "before": before, "scale_image": scaled_by_gimp,
                  "after": describe(img.get_layers()[0])}
dump("text_after.raw", raw(img.get_layers()[0], "R'G'B'A u8"))

# 2. Precisions the plug-in moves as float: half, u32, float; linear and non-linear TRCs.
CASES = [
    ("half_rgba", Gimp.Precision.HALF_NON_LINEAR, Gimp.ImageBaseType.RGB, Gimp.ImageType.RGBA_IMAGE, "R'G'B'A float", 4),
    ("u32_rgb", Gimp.Precision.U32_LINEAR, Gimp.ImageBaseType.RGB, Gimp.ImageType.RGB_IMAGE, "R'G'B' float", 3),
    ("float_rgb", Gimp.Precision.FLOAT_LINEAR, Gimp.ImageBaseType.RGB, Gimp.ImageType.RGB_IMAGE, "R'G'B' float", 3),
    ("float_gray", Gimp.Precision.FLOAT_NON_LINEAR, Gimp.ImageBaseType.GRAY, Gimp.ImageType.GRAY_IMAGE, "Y' float", 1),
]
W, H = 20, 16
for name, precision, base, itype, fmt, channels in CASES:
    im = Gimp.Image.new_with_precision(W, H, base, precision)
    layer = Gimp.Layer.new(im, name, W, H, itype, 100.0, Gimp.LayerMode.NORMAL)
    im.insert_layer(layer, None, 0)
    values = []
    for y in range(H):
        for x in range(W):
            for c in range(channels):
                if channels == 4 and c == 3:
                    values.append(0.5 if x < 4 else 1.0)  # a half-transparent strip
                else:
                    values.append(0.5 + 0.45 * math.sin(0.9 * x + 1.7 * c) * math.cos(0.6 * y - 0.8 * c))
    put(layer, fmt, struct.pack("<%df" % len(values), *values))
    precision_before = im.get_precision().value_nick
    dump(name + "_before.raw", raw(layer, fmt))
    status, message = run(im, 2.0)
    report[name] = {"status": status, "message": message, "image": [im.get_width(), im.get_height()],
                    "precision_before": precision_before, "precision_after": im.get_precision().value_nick,
                    "channels": channels, "format": fmt}
    dump(name + "_after.raw", raw(layer, fmt))

with open(os.path.join(OUT, "report.json"), "w") as f:
    json.dump(report, f)
