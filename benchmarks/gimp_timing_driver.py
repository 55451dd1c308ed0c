# Runs inside headless GIMP 3 (see bench_gimp.py): times python-fu-liif-upscale from the
# procedure's start to its return, LIIF_BENCH_RUNS times on the same 512x512 image.
import json
import os
import time

from gi.repository import Gimp, Gio

NI = Gimp.RunMode.NONINTERACTIVE
proc = Gimp.get_pdb().lookup_procedure("python-fu-liif-upscale")
times = []
for _ in range(int(os.environ.get("LIIF_BENCH_RUNS", "3"))):
    image = Gimp.file_load(NI, Gio.File.new_for_path(os.environ["LIIF_BENCH_INPUT"]))
    config = proc.create_config()
    config.set_property("run-mode", NI)
    config.set_property("image", image)
    config.set_core_object_array("drawables", image.get_selected_drawables())
    config.set_property("scale", float(os.environ.get("LIIF_BENCH_SCALE", "2")))
    config.set_property("new-image", True)
    start = time.perf_counter()
    result = proc.run(config)
    times.append(time.perf_counter() - start)
    if result.index(0) != Gimp.PDBStatusType.SUCCESS:
        raise RuntimeError("procedure failed: %s" % result.index(1))
    result.index(1).delete()
    image.delete()
with open(os.environ["LIIF_BENCH_REPORT"], "w") as f:
    json.dump(times, f)
