# Runs in GUI GIMP 3 under Xvfb (gui_dialog.sh): an image with a display and a selection; the
# image command, then the layer command with "Only the selection", each INTERACTIVE, so their
# dialogs show (gui_dialog.sh answers them); LIIF_TEST_REPORT gets status and sizes.
import json
import os

from gi.repository import Gimp, Gio

NI = Gimp.RunMode.NONINTERACTIVE
img = Gimp.file_load(NI, Gio.File.new_for_path(os.environ["LIIF_TEST_RGB"]))
Gimp.Display.new(img)
report = {}
for key, name in (("image", "python-fu-liif-upscale"), ("layer", "python-fu-liif-upscale-layer")):
    if key == "layer":
        img.select_rectangle(Gimp.ChannelOps.REPLACE, 4, 6, 13, 9)
    proc = Gimp.get_pdb().lookup_procedure(name)
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    config.set_property("image", img)
    config.set_core_object_array("drawables", img.get_selected_layers())
    if key == "layer":
        config.set_property("selection-only", True)
    result = proc.run(config)  # blocks while the dialog is shown
    status = result.index(0)
    entry = {"status": status.value_nick, "image": [img.get_width(), img.get_height()]}
    if status == Gimp.PDBStatusType.SUCCESS:
        out = result.index(1)
        entry["result"] = [out.get_width(), out.get_height()]
    else:
        entry["message"] = str(result.index(1)) if result.length() > 1 else ""
    report[key] = entry
with open(os.environ["LIIF_TEST_REPORT"], "w") as f:
    json.dump(report, f)
