# Runs inside headless GIMP 3 (python-fu-eval), driven by test_real_gimp.py: Layer > Upscale
# Layer (LIIF) (python-fu-liif-upscale-layer) on one layer in place, on the selection into a
# new image, and the refusals; with LIIF_JAX_TEST_FAIL_AFTER_SCALE=1 only the injected
# failure after layer.scale(). Raw pixels and report.json go to LIIF_TEST_OUT.
import json
import os
import sys

from gi.repository import Gimp, Gio

sys.path.insert(0, "/liif-work/liif-test")  # gimp_helpers.py, copied there by the tests
from gimp_helpers import dump, put, raw, run_procedure, state  # noqa: E402

NI = Gimp.RunMode.NONINTERACTIVE
PROC = "python-fu-liif-upscale-layer"
OUT = os.environ["LIIF_TEST_OUT"]
report = {}


def make():
    img = Gimp.file_load(NI, Gio.File.new_for_path(os.environ["LIIF_TEST_RGB"]))
    sticker = Gimp.Layer.new(img, "sticker", 10, 8, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(sticker, None, 0)
    sticker.set_offsets(5, 3)
    put(sticker, "R'G'B'A u8", bytes((x * 23 + y * 41 + c * 67) % 256 if c < 3 else 255
                                     for y in range(8) for x in range(10) for c in range(4)))
    return img, sticker, img.get_layers()[1]


def layer_report(layer):
    _, x, y = layer.get_offsets()
    return {"size": [layer.get_width(), layer.get_height()], "offsets": [x, y]}


if os.environ.get("LIIF_JAX_TEST_FAIL_AFTER_SCALE") == "1":
    img, sticker, bg = make()
    before = state(img)
    status, message, _ = run_procedure(PROC, img, [sticker], scale=2.0)
    report["failure"] = {"status": status, "message": message, "before": before, "after": state(img)}
else:
    # 1. in place, x2: the layer doubles around its centre, the canvas and the rest stay
    img, sticker, bg = make()
    dump("sticker_before.raw", raw(sticker, "R'G'B'A u8"))
    bg_before = state(img)["layers"][1]
    status, message, result = run_procedure(PROC, img, [sticker], scale=2.0)
    report["layer"] = {"status": status, "message": message, "result_is_input": result == img,
                       "image": [img.get_width(), img.get_height()], "sticker": layer_report(sticker),
                       "bg_unchanged": state(img)["layers"][1] == bg_before}
    dump("sticker_after.raw", raw(sticker, "R'G'B'A u8"))
    # 2. width only: height from the layer's aspect ratio
    img, sticker, bg = make()
    status, message, _ = run_procedure(PROC, img, [sticker], scale=0.0, width=15)
    report["width_only"] = {"status": status, "sticker": layer_report(sticker)}
    # 3. the selection's bounds within the background, into a new image; the input untouched
    img, sticker, bg = make()
    img.select_rectangle(Gimp.ChannelOps.REPLACE, 4, 6, 13, 9)
    dump("bg_before.raw", raw(bg, "R'G'B' u8"))
    before = state(img)
    status, message, result = run_procedure(PROC, img, [bg], scale=2.0, selection_only=True)
    report["selection"] = {"status": status, "message": message, "unchanged": state(img) == before,
                           "result_is_input": result == img,
                           "result": [result.get_width(), result.get_height(), len(result.get_layers())]}
    dump("selection_after.raw", raw(result.get_layers()[0], "R'G'B' u8"))
    # 4. refusals leave the image as it was
    Gimp.Selection.none(img)
    before = state(img)
    status, message, _ = run_procedure(PROC, img, [bg], scale=2.0, selection_only=True)
    report["no_selection"] = {"status": status, "message": message, "unchanged": state(img) == before}
    group = Gimp.GroupLayer.new(img, "group")
    img.insert_layer(group, None, 0)
    before = state(img)
    status, message, _ = run_procedure(PROC, img, [group], scale=2.0)
    report["group"] = {"status": status, "message": message, "unchanged": state(img) == before}

with open(os.path.join(OUT, "report.json"), "w") as f:
    json.dump(report, f)
