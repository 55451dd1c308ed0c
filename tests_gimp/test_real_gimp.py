"""The GIMP 3 plug-in in a real, headless GIMP 3.0 (Debian trixie chroot, built by
.ci/gimp/build_chroot.sh). Run by .ci/run's GIMP stage (needs root):

    LIIF_GIMP_INSTALL_SRC=$PWD bash .ci/gimp/build_chroot.sh && .venv/bin/python -m pytest tests_gimp

Each test runs gimp-console-3.0 with tests_gimp/gimp_driver.py and checks what it exported.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import DEV  # noqa: E402

import liif_jax  # noqa: E402

ROOT = Path(os.environ.get("LIIF_GIMP_CHROOT", "/var/tmp/liif-gimp-chroot"))
WORK_IN = "/liif-work/liif-test"  # the same folder as seen inside the chroot
VENV_PYTHON = "/opt/liif-venv/bin/python"

if not (ROOT / ".liif-gimp-complete").exists():
    pytest.fail(f"no GIMP chroot at {ROOT}: run .ci/gimp/build_chroot.sh first (see README)",
                pytrace=False)


@pytest.fixture(scope="module")
def work():
    folder = ROOT / "liif-work" / "liif-test"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    rgb = Image.open(DEV / "in_chelsea_32x32.png").convert("RGB")
    rgb.save(folder / "in_rgb.png")
    rgba = np.asarray(Image.open(DEV / "in_coffee_40x24.png").convert("RGBA")).copy()
    rgba[:, :8, 3] = 0  # a transparent strip
    rgba[:, 8:12, 3] = 128  # a half-transparent one
    Image.fromarray(rgba).save(folder / "in_rgba.png")
    # A worker that dies mid-run: reads the request, reports some progress, crashes.
    crash = folder / "crashing-python"
    crash.write_text("#!/usr/bin/python3\nimport sys, json\n"
                     "h = json.loads(sys.stdin.buffer.readline())\n"
                     "sys.stdin.buffer.read(h['bytes'])\n"
                     "sys.stdout.write(json.dumps({'liif': 1, 'event': 'progress', 'done': 1, 'total': 9}) + '\\n')\n"
                     "sys.stdout.flush()\n"
                     "sys.stderr.write('simulated crash of the worker\\n')\n"
                     "sys.exit(3)\n")
    crash.chmod(0o755)
    return folder


def plugin_dir(tmp_path, python):
    folder = tmp_path / "plugins" / "liif_upscale"
    folder.mkdir(parents=True)
    shutil.copy(REPO / "gimp_plugin" / "liif_upscale" / "liif_upscale.py", folder)
    shutil.copy(REPO / "gimp_plugin" / "liif_bridge_client.py", folder)
    (folder / "liif_jax_gimp.json").write_text(json.dumps({"python": python, "start_server": False}))
    return folder


def run_gimp(tmp_path, work, cases, python=VENV_PYTHON):
    report = work / f"report-{tmp_path.name}.json"
    env = dict(os.environ, LIIF_TEST_CASES=json.dumps(cases),
               LIIF_TEST_REPORT=f"{WORK_IN}/{report.name}", LIIF_GIMP_CHROOT=str(ROOT))
    proc = subprocess.run(["bash", str(REPO / ".ci" / "gimp" / "run_gimp_batch.sh"),
                           str(Path(__file__).parent / "gimp_driver.py"), str(plugin_dir(tmp_path, python))],
                          env=env, capture_output=True, text=True, timeout=900)
    result = json.loads(report.read_text()) if report.exists() else []
    return proc, result


def rgba(path):
    return np.asarray(Image.open(path).convert("RGBA")).astype(np.float64) / 255


def same_image(a, b):
    """Equal alpha everywhere and equal colour wherever it can be seen (GIMP's PNG export
    zeroes the colour of fully transparent pixels by default)."""
    visible = b[..., 3] > 0
    return np.array_equal(a[..., 3], b[..., 3]) and np.array_equal(a[..., :3][visible], b[..., :3][visible])


def test_upscales_in_place_and_as_new_image(tmp_path, work):
    cases = [
        {"name": "rgba x2.5", "input": f"{WORK_IN}/in_rgba.png", "scale": 2.5, "output": f"{WORK_IN}/o1.png"},
        {"name": "rgb width only", "input": f"{WORK_IN}/in_rgb.png", "width": 80, "output": f"{WORK_IN}/o2.png"},
        {"name": "rgb new image", "input": f"{WORK_IN}/in_rgb.png", "scale": 2.0, "new_image": True,
         "output": f"{WORK_IN}/o3.png"},
        {"name": "rgba new image width", "input": f"{WORK_IN}/in_rgba.png", "width": 48, "new_image": True,
         "output": f"{WORK_IN}/o4.png"},
    ]
    proc, report = run_gimp(tmp_path, work, cases)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_name = {r["name"]: r for r in report}
    assert all(r["status"] == "success" for r in report) and len(report) == 4
    assert by_name["rgba x2.5"]["result_size"] == [60, 100] and by_name["rgba x2.5"]["result_is_input"]
    assert by_name["rgb width only"]["result_size"] == [80, 80] and by_name["rgb width only"]["result_is_input"]
    assert by_name["rgb new image"]["result_size"] == [64, 64] and not by_name["rgb new image"]["result_is_input"]
    assert by_name["rgb new image"]["after"] == [32, 32]
    assert by_name["rgba new image width"]["result_size"] == [48, 80]

    model = liif_jax.load_model()
    # RGB pixels equal liif-jax's own upscale of the same file, where alpha is 255.
    for out_name, src, size in [("o1.png", "in_rgba.png", (60, 100)), ("o2.png", "in_rgb.png", (80, 80)),
                                ("o3.png", "in_rgb.png", (64, 64)), ("o4.png", "in_rgba.png", (48, 80))]:
        got = rgba(work / out_name)
        src_arr = np.asarray(Image.open(work / src))
        expected = liif_jax.upscale(src_arr, size=size, model=model, precision="float32")
        if expected.shape[2] == 3:
            expected = np.concatenate([expected, np.ones(expected.shape[:2] + (1,))], axis=-1)
        opaque = np.rint(expected[..., 3] * 255) == 255
        assert opaque.any()
        assert np.abs(got[..., :3][opaque] - expected[..., :3][opaque]).max() <= 1 / 255 + 1e-9, out_name
        assert np.abs(got[..., 3] - expected[..., 3]).max() <= 1 / 255 + 1e-9, out_name  # alpha survived
    # The transparent strip stayed transparent, the opaque part opaque.
    o1 = rgba(work / "o1.png")
    assert o1[:, :16, 3].max() <= 2 / 255 and o1[:, 32:, 3].min() >= 253 / 255
    # new-image left the input exactly as it was.
    assert same_image(rgba(work / "o3.png.input-after.png"), rgba(work / "in_rgb.png"))
    assert same_image(rgba(work / "o4.png.input-after.png"), rgba(work / "in_rgba.png"))


@pytest.mark.parametrize("python,message", [
    ("/nonexistent/python", "the liif-jax interpreter /nonexistent/python does not exist"),
    (f"{WORK_IN}/crashing-python", "liif-jax worker failed: simulated crash of the worker"),
])
def test_broken_worker_exits_64_with_our_message_and_an_unchanged_image(tmp_path, work, python, message):
    cases = [{"name": "broken", "input": f"{WORK_IN}/in_rgba.png", "scale": 2.0,
              "output": f"{WORK_IN}/broken-{tmp_path.name}.png"}]
    proc, report = run_gimp(tmp_path, work, cases, python=python)
    assert proc.returncode == 64, proc.stderr[-3000:]
    assert f"Upscale (LIIF): {message}" in proc.stderr
    (entry,) = report
    assert entry["status"] == "execution-error" and message in entry["message"]
    assert entry["after"] == entry["before"] == [24, 40]
    after = rgba(work / f"broken-{tmp_path.name}.png.input-after.png")
    assert same_image(after, rgba(work / "in_rgba.png"))


def test_groups_offsets_masks_16bit_gray_and_indexed(tmp_path, work):
    out = work / "structures"
    out.mkdir(exist_ok=True)
    out.chmod(0o777)
    env = dict(os.environ, LIIF_TEST_OUT=f"{WORK_IN}/structures", LIIF_TEST_RGB=f"{WORK_IN}/in_rgb.png",
               LIIF_GIMP_CHROOT=str(ROOT))
    proc = subprocess.run(["bash", str(REPO / ".ci" / "gimp" / "run_gimp_batch.sh"),
                           str(Path(__file__).parent / "gimp_structures_driver.py"),
                           str(plugin_dir(tmp_path, VENV_PYTHON))],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    model = liif_jax.load_model()

    def raw(name, shape, dtype=np.uint8):
        return np.frombuffer((out / name).read_bytes(), dtype).reshape(shape)

    # Group: image doubled; the child doubled in size and offsets, mask kept and scaled.
    g = report["group"]
    assert g["status"] == "success" and g["image"] == [64, 64]
    (group, bg) = g["layers"]
    assert group["group"] and bg["size"] == [64, 64]
    (child,) = group["children"]
    assert child["size"] == [20, 16] and child["offsets"] == [10, 6] and child["mask"] == [20, 16]
    for name, shape_before, shape_after in [("group_child", (8, 10, 4), (16, 20, 4)),
                                            ("group_bg", (32, 32, 3), (64, 64, 3))]:
        before, after = raw(f"{name}_before.raw", shape_before), raw(f"{name}_after.raw", shape_after)
        expected = liif_jax.upscale(before, size=(shape_after[1], shape_after[0]), model=model,
                                    precision="float32", dtype=np.uint8)
        assert np.abs(after.astype(int) - expected).max() <= 1, name

    # 16-bit travels as 16-bit: the result is liif-jax's own at 16 bits.
    u = report["u16"]
    assert u["status"] == "success" and u["image"] == [48, 40] and u["precision"] == "u16-non-linear"
    before, after = raw("u16_before.raw", (20, 24, 3), "<u2"), raw("u16_after.raw", (40, 48, 3), "<u2")
    expected = np.rint(liif_jax.upscale(before, size=(48, 40), model=model, precision="float32") * 65535)
    assert np.abs(after.astype(np.int64) - expected).max() <= 2
    assert len(np.unique(after)) > 1000  # real 16-bit content, not 8-bit steps

    # Gray + alpha stays gray + alpha.
    gr = report["gray"]
    assert gr["status"] == "success" and gr["image"] == [30, 24] and gr["base"] == "gray"
    before, after = raw("gray_before.raw", (16, 20, 2)), raw("gray_after.raw", (24, 30, 2))
    expected = liif_jax.upscale(before, size=(30, 24), model=model, precision="float32", dtype=np.uint8)
    assert np.abs(after.astype(int) - expected).max() <= 1

    # Indexed: refused with a message saying what to do, image untouched.
    ix = report["indexed"]
    assert ix["base"] == "indexed" and ix["image"] == [32, 32]
    assert ix["status"] != "success"
    if ix["status"] == "execution-error":
        assert "Image > Mode > RGB" in ix["message"]
