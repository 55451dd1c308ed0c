# Helpers the drivers share, imported inside GIMP's python-fu-eval (a driver puts
# /liif-work/liif-test, where the `work` fixture of test_real_gimp.py copies this file, on
# sys.path): pixels in and out of Gegl buffers, raw dumps to LIIF_TEST_OUT, and one
# non-interactive run of python-fu-liif-upscale.
import os

from gi.repository import Gegl, Gimp


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
