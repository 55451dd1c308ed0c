"""A minimal fake of GIMP 2.10's ``gimpfu`` for testing the Python-Fu plug-in without GIMP.

It records ``register`` calls and every PDB call, and models just enough of images, layers
and pixel regions (8-bit, NumPy-backed) for the plug-in's code paths. ``gimp_image_scale``
follows GIMP's rounding (sizes and offsets rounded to nearest) with nearest-neighbour pixels.
"""

import copy

import numpy as np

RGB, GRAY, INDEXED = 0, 1, 2
PF_INT, PF_FLOAT, PF_STRING, PF_BOOL, PF_IMAGE, PF_DRAWABLE, PF_OPTION = range(7)
PRECISION_U8_NON_LINEAR, PRECISION_U16_NON_LINEAR = 150, 250
ORIENTATION_HORIZONTAL, ORIENTATION_VERTICAL = 0, 1

REGISTERED = []
CALLS = []  # (name, args) of every pdb/gimp call, in order


def register(*args, **kwargs):
    REGISTERED.append((args, kwargs))


def main():
    pass


class Region:
    def __init__(self, layer, dirty):
        self.layer, self.dirty = layer, dirty

    def __getitem__(self, key):
        xs, ys = key
        return self.layer.pixels[ys, xs].tobytes()

    def __setitem__(self, key, data):
        xs, ys = key
        if not self.dirty:
            raise AssertionError("writing to a read-only pixel region")
        shape = self.layer.pixels[ys, xs].shape
        self.layer.pixels[ys, xs] = np.frombuffer(data, np.uint8).reshape(shape)


class Layer:
    def __init__(self, name, pixels, offsets=(0, 0), gray=False, children=None):
        self.name, self.pixels, self.offsets, self.gray = name, pixels, offsets, gray
        self.children = children  # a list for a layer group

    @property
    def width(self):
        return self.pixels.shape[1]

    @property
    def height(self):
        return self.pixels.shape[0]

    @property
    def bpp(self):
        return self.pixels.shape[2]

    def get_pixel_rgn(self, x, y, w, h, dirty, shadow):
        CALLS.append(("get_pixel_rgn", (self.name, dirty)))
        return Region(self, dirty)

    def flush(self):
        CALLS.append(("flush", (self.name,)))

    def merge_shadow(self, undo):
        CALLS.append(("merge_shadow", (self.name, undo)))

    def update(self, *args):
        CALLS.append(("update", (self.name,)))


class Image:
    def __init__(self, width, height, layers, base_type=RGB, precision=PRECISION_U8_NON_LINEAR):
        self.width, self.height, self.layers = width, height, layers
        self.base_type, self.precision = base_type, precision
        self.deleted = False
        self.channels, self.vectors = [], []
        self.selection = Layer("selection", np.zeros((height, width, 1), np.uint8))


def _walk(layers):
    for layer in layers:
        yield layer
        if layer.children is not None:
            for child in _walk(layer.children):
                yield child


class _Pdb:
    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        impl = getattr(self, "_" + name, None)

        def call(*args):
            CALLS.append((name, args))
            return impl(*args) if impl else None
        return call

    def _gimp_image_get_precision(self, image):
        return image.precision

    def _gimp_image_duplicate(self, image):
        return copy.deepcopy(image)

    def _gimp_item_is_group(self, item):
        return item.children is not None

    def _gimp_drawable_is_gray(self, layer):
        return layer.gray

    def _gimp_drawable_has_alpha(self, layer):
        return layer.bpp in (2, 4)

    def _gimp_image_delete(self, image):
        image.deleted = True

    def _gimp_image_resize(self, image, width, height, offx, offy):
        # Canvas only (content not scaled): layers keep their pixels and offsets here.
        image.width, image.height = width, height
        image.selection.pixels = np.zeros((height, width, 1), np.uint8)

    def _gimp_image_remove_layer(self, image, layer):
        image.layers.remove(layer)

    def _gimp_layer_new_from_drawable(self, layer, image):
        new = copy.deepcopy(layer)
        new.name = layer.name + " copy"
        return new

    def _gimp_image_insert_layer(self, image, layer, parent, position):
        (image.layers if parent is None else parent.children).insert(position, layer)

    def _gimp_item_get_name(self, item):
        return item.name

    def _gimp_item_set_name(self, item, name):
        item.name = name

    def _gimp_image_get_selection(self, image):
        return image.selection

    def _gimp_image_scale(self, image, width, height):
        sx, sy = width / float(image.width), height / float(image.height)
        for layer in _walk(image.layers):
            if layer.children is not None:
                continue
            w = max(1, int(layer.width * sx + 0.5))
            h = max(1, int(layer.height * sy + 0.5))
            rows = np.minimum((np.arange(h) / sy).astype(int), layer.height - 1)
            cols = np.minimum((np.arange(w) / sx).astype(int), layer.width - 1)
            layer.pixels = layer.pixels[rows][:, cols].copy()
            layer.offsets = (int(layer.offsets[0] * sx + 0.5), int(layer.offsets[1] * sy + 0.5))
        image.width, image.height = width, height


class _Gimp:
    def __getattr__(self, name):
        def call(*args):
            CALLS.append(("gimp." + name, args))
        return call


pdb = _Pdb()
gimp = _Gimp()
