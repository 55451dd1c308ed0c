"""Batch upscaling on Apache Beam (DirectRunner): the CLI's files bit for bit, failures
recorded and never fatal, reruns skip what exists. Skips where Apache Beam is not installed
(it is an optional extra with its own pins; CI installs it in a stage of its own)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import TINY

try:
    import apache_beam  # noqa: F401
except ImportError:
    # CI's Beam stage sets LIIF_JAX_REQUIRE_BEAM=1: there a missing Beam is a failure, not a skip.
    if os.environ.get("LIIF_JAX_REQUIRE_BEAM") == "1":
        raise
    pytest.skip("Apache Beam is not installed (pip install '.[beam]' in the liif-jax checkout); CI runs these in its Beam stage",
                allow_module_level=True)

from liif_jax.beam.pipeline import glob_base, main as beam_main, plan_job  # noqa: E402
from liif_jax.cli import main as cli_main  # noqa: E402

WEIGHTS = str(TINY / "tiny-liif.pth")


@pytest.fixture()
def inputs(tmp_path):
    """A folder as a data set has them: PNG and JPEG, 8- and 16-bit, a subfolder, a broken
    file and a file that is not an image."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()[:40, :56]).save(root / "a.png")
    Image.fromarray(skimage.data.chelsea()[:30, :44]).save(root / "sub" / "b.jpg", quality=90)
    gray16 = (skimage.data.camera()[:24, :32].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(root / "c16.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "notes.txt").write_text("not an image")
    return root


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("size_args", [["--scale", "2.5"], ["--size", "50x40"]])
def test_beam_writes_the_clis_files_bit_for_bit(inputs, tmp_path, capsys, size_args):
    cli_out, beam_out = tmp_path / "cli", tmp_path / "beam"
    assert cli_main(["upscale", str(inputs), str(cli_out), *size_args, "--weights", WEIGHTS, "-q"]) == 1  # broken.png
    code = beam_main(["--input", f"{inputs}/**", "--output", str(beam_out), *size_args, "--weights", WEIGHTS,
                      "--runner", "DirectRunner"])
    out = capsys.readouterr().out
    assert code == 1 and "3 upscaled, 0 skipped" in out and "1 failed" in out, out
    cli_files, beam_files = files_of(cli_out), files_of(beam_out)
    failed = beam_files.pop("failed.jsonl")
    assert sorted(cli_files) == sorted(beam_files) == ["a.png", "c16.png", "sub/b.jpg"]
    for name in cli_files:
        assert cli_files[name] == beam_files[name], name  # the same bytes
    records = [json.loads(line) for line in failed.decode().splitlines()]
    assert len(records) == 1 and records[0]["path"].endswith("broken.png")
    assert "\n" not in records[0]["reason"] and records[0]["reason"]


def test_a_rerun_skips_what_exists_and_retries_the_failures(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--input", f"{inputs}/*.png", "--output", str(out), "--scale", "2", "--weights", WEIGHTS]
    assert beam_main(argv) == 1
    capsys.readouterr()
    (out / "a.png").write_bytes(b"kept")  # a rerun must not touch it
    (inputs / "broken.png").unlink()
    Image.fromarray(skimage.data.coffee()[:20, :20]).save(inputs / "broken.png")  # fixed since
    assert beam_main(argv) == 0
    said = capsys.readouterr().out
    assert "1 upscaled, 2 skipped" in said and "0 failed" in said, said
    assert (out / "a.png").read_bytes() == b"kept"
    assert Image.open(out / "broken.png").size == (40, 40)
    assert not (out / "failed.jsonl").exists()  # nothing failed this time
    assert beam_main(argv + ["--overwrite"]) == 0
    assert (out / "a.png").read_bytes() != b"kept"


def test_paths_below_the_glob_are_kept():
    assert glob_base("photos/**/*.png") == "photos/" and glob_base("/d/in/*") == "/d/in/"
    assert glob_base("a.png") == "" and glob_base("gs://b/x/[ab].png") == "gs://b/x/"
    job = plan_job("gs://b/in/sub/x.bmp", "gs://b/in/", "gs://b/out/", None)
    assert job.dst == "gs://b/out/sub/x.png" and job.rel == "sub/x.bmp"  # BMP becomes PNG, as upscale does
    assert plan_job("/in/y.JPG", "/in/", "/out", "webp").dst == "/out/y.webp"


def test_bad_requests_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "liif_jax.beam", "--input", "x/*", "--output", str(tmp_path),
                           "--scale", "2", "--weights", str(tmp_path / "missing.safetensors")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such weight file" in proc.stderr
