# Runs inside headless GIMP 3 (python-fu-eval), driven by test_real_gimp.py.
# LIIF_TEST_CASES: JSON list of cases; each loads an image, runs python-fu-liif-upscale
# NONINTERACTIVE, exports what the test checks, and records the outcome in LIIF_TEST_REPORT.
# A failing call exports the image as it is afterwards, then raises with the procedure's
# message (as a batch script would), so GIMP exits 64.
import json
import os

from gi.repository import Gimp, Gio

NI = Gimp.RunMode.NONINTERACTIVE
cases = json.loads(os.environ["LIIF_TEST_CASES"])
report = []


def export(image, path):
    if not Gimp.file_save(NI, image, Gio.File.new_for_path(path), None):
        raise RuntimeError("export failed: " + path)


for case in cases:
    image = Gimp.file_load(NI, Gio.File.new_for_path(case["input"]))
    before = (image.get_width(), image.get_height())
    proc = Gimp.get_pdb().lookup_procedure("python-fu-liif-upscale")
    if proc is None:
        raise RuntimeError("python-fu-liif-upscale is not registered")
    config = proc.create_config()
    config.set_property("run-mode", NI)
    config.set_property("image", image)
    config.set_core_object_array("drawables", image.get_selected_drawables())
    config.set_property("scale", case.get("scale", 0.0))
    config.set_property("width", case.get("width", 0))
    config.set_property("height", case.get("height", 0))
    config.set_property("new-image", case.get("new_image", False))
    if "precision" in case:
        config.set_property("precision", case["precision"])
    result = proc.run(config)
    status = result.index(0)
    entry = {"name": case["name"], "status": status.value_nick, "before": before}
    if status == Gimp.PDBStatusType.SUCCESS:
        out = result.index(1)
        entry["result_is_input"] = out == image
        entry["after"] = (image.get_width(), image.get_height())
        entry["result_size"] = (out.get_width(), out.get_height())
        export(out, case["output"])
        if out != image:
            export(image, case["output"] + ".input-after.png")
        report.append(entry)
    else:
        entry["message"] = str(result.index(1)) if result.length() > 1 else ""
        entry["after"] = (image.get_width(), image.get_height())
        export(image, case["output"] + ".input-after.png")
        report.append(entry)
        with open(os.environ["LIIF_TEST_REPORT"], "w") as f:
            json.dump(report, f)
        raise RuntimeError("python-fu-liif-upscale failed: " + entry["message"])

with open(os.environ["LIIF_TEST_REPORT"], "w") as f:
    json.dump(report, f)
