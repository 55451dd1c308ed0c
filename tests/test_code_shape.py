"""The shape of the code: one import direction between the two packages, every error class in
liif_jax/errors.py with its exit and bridge codes, each shared constant defined once (and the
stdlib GIMP client's copies equal to the library's)."""

import ast
import sys
from pathlib import Path

import pytest

from conftest import REPO
import liif_jax.errors as errors
from liif_jax.bridge import protocol

LIBRARY = REPO / "liif_jax"
READER = REPO / "convert_weights"


def _modules(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function bodies included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", _modules(READER), ids=lambda p: p.name)
def test_convert_weights_imports_nothing_of_liif_jax(path):
    """liif_jax imports convert_weights (the checkpoint reader), never the reverse. The one
    exception is the program entry ``python -m convert_weights``, which nothing imports."""
    if path.name == "__main__.py":
        return
    wrong = sorted(n for n in _imported(path) if _top(n) == "liif_jax")
    assert not wrong, f"{path.relative_to(REPO)} imports {wrong}"
    # What it needs instead: NumPy and the standard library only.
    allowed = {"convert_weights", "numpy", "__future__", *sys.stdlib_module_names}
    assert {_top(n) for n in _imported(path)} <= allowed


def test_the_direction_is_used_and_the_check_would_see_a_violation(tmp_path):
    assert any(_top(n) == "convert_weights" for p in _modules(LIBRARY) for n in _imported(p))
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from liif_jax.weights import load_model\n    import liif_jax.errors\n")
    assert _imported(bad) == {"liif_jax.weights", "liif_jax.errors"}


ERROR_CLASSES = sorted((c for c in vars(errors).values()
                        if isinstance(c, type) and issubclass(c, errors.LiifError)), key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_has_an_exit_code_and_a_bridge_code(cls):
    assert type(cls.exit_code) is int and 0 < cls.exit_code < 256
    assert cls.bridge_code in protocol.ERROR_CODES


def test_no_error_class_is_defined_outside_errors_py():
    """A subclass of one of liif-jax's errors belongs in liif_jax/errors.py (or, for the three
    the checkpoint reader raises, convert_weights/errors.py)."""
    names = {c.__name__ for c in ERROR_CLASSES}
    homes = {LIBRARY / "errors.py", READER / "errors.py"}
    found = []
    for path in _modules(LIBRARY) + _modules(READER):
        if path in homes:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None) for b in node.bases}
                if bases & names:
                    found.append(f"{path.relative_to(REPO)}: {node.name}")
    assert not found


def test_exit_and_bridge_codes_are_what_they_were():
    codes = {c.__name__: (c.exit_code, c.bridge_code) for c in ERROR_CLASSES}
    assert codes == {
        "LiifError": (1, "request"), "ImageError": (1, "image"), "RequestError": (2, "request"),
        "OutputError": (1, "request"), "CheckpointError": (1, "checkpoint"),
        "UnsafeCheckpointError": (1, "checkpoint"), "Cancelled": (130, "cancelled"),
        "TrainingInterrupted": (130, "cancelled"), "DataPipelineError": (1, "request"),
        "NonFiniteParams": (3, "request"), "OtherModelError": (1, "checkpoint"),
        "LoaderChoiceError": (2, "request"),
    }


def test_the_bridge_answers_with_the_class_code():
    from liif_jax.bridge.worker import _error_code

    for cls in ERROR_CLASSES:
        assert _error_code(cls("x")) == cls.bridge_code
    assert _error_code(ValueError("x")) == _error_code(TypeError("x")) == "internal"


def test_moved_classes_are_the_same_under_their_old_names():
    import convert_weights
    import convert_weights.errors
    import liif_jax
    from liif_jax import engine
    from liif_jax.train import checkpoint, loop, pipeline

    assert liif_jax.Cancelled is engine.Cancelled is errors.Cancelled
    assert loop.TrainingInterrupted is errors.TrainingInterrupted
    assert loop.DataPipelineError is errors.DataPipelineError
    assert checkpoint.NonFiniteParams is errors.NonFiniteParams
    assert checkpoint.OtherModelError is errors.OtherModelError
    assert pipeline.LoaderChoiceError is errors.LoaderChoiceError
    # The reader raises the very classes users catch.
    assert convert_weights.CheckpointError is convert_weights.errors.CheckpointError is errors.CheckpointError
    assert convert_weights.errors.UnsafeCheckpointError is errors.UnsafeCheckpointError
    assert convert_weights.errors.LiifError is errors.LiifError is liif_jax.LiifError
    for name in ("ImageError", "RequestError", "OutputError", "CheckpointError", "Cancelled"):
        assert getattr(liif_jax, name) is getattr(errors, name) and name in liif_jax.__all__


def test_ctrl_c_is_exit_130_and_the_class_code_is_used(monkeypatch, capsys):
    import argparse

    from liif_jax.cli import run

    def stop(args):
        raise KeyboardInterrupt

    def nonfinite(args):
        raise errors.NonFiniteParams("boom")

    assert run(argparse.Namespace(run=stop)) == 130
    assert run(argparse.Namespace(run=nonfinite)) == 3
    assert capsys.readouterr().err.splitlines() == ["liif-jax: interrupted", "liif-jax: error: boom"]


# ----------------------------------------------------------------------------- constants

def _literals(path: Path):
    """Every number, string and collection of constants written in ``path`` (``15 * 60``
    counts as 900)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
            yield node.value
        elif isinstance(node, ast.BinOp) and all(isinstance(n, ast.Constant) and type(n.value) is int
                                                 for n in (node.left, node.right)):
            yield eval(compile(ast.Expression(node), str(path), "eval"))  # two int literals
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and all(isinstance(e, ast.Constant) for e in node.elts):
            yield tuple(sorted(map(str, (e.value for e in node.elts))))


@pytest.mark.parametrize("value, home", [
    (("bfloat16", "float32"), "constants.py"),  # the precisions
    (100_000_000, "api.py"),  # DEFAULT_MAX_PIXELS
    (15 * 60, "bridge/server.py"),  # DEFAULT_IDLE_TIMEOUT_S
    (("20", "32", "6"), "models/shapes.py"),  # RDN_CONFIGS["A"] (20 blocks, 6 layers, growth 32)
    (("16", "64", "8"), "models/shapes.py"),  # RDN_CONFIGS["B"]
])
def test_shared_constants_are_written_once(value, home):
    where = [str(p.relative_to(LIBRARY)) for p in _modules(LIBRARY) if value in set(_literals(p))]
    assert where == [home]


def test_the_command_uses_the_library_constants():
    from liif_jax.api import DEFAULT_MAX_PIXELS
    from liif_jax.bridge.server import DEFAULT_IDLE_TIMEOUT_S
    from liif_jax.cli import build_parser
    from liif_jax.constants import PRECISIONS
    from liif_jax.engine import PRECISIONS as ENGINE_PRECISIONS

    assert ENGINE_PRECISIONS is PRECISIONS
    parser = build_parser()
    up = parser.parse_args(["upscale", "a.png", "b.png", "--scale", "2"])
    assert up.max_pixels == DEFAULT_MAX_PIXELS
    assert parser.parse_args(["serve"]).idle_timeout == DEFAULT_IDLE_TIMEOUT_S
    for command in (["upscale", "a.png", "b.png"], ["eval", "--data", "d"]):
        for precision in PRECISIONS:
            assert parser.parse_args([*command, "--precision", precision]).precision == precision


def test_the_gimp_clients_precisions_are_the_engines():
    """The plug-ins' client runs in GIMP's Python and cannot import liif_jax: its copy of the
    precisions must be the engine's ("auto" sends none: the worker's backend decides)."""
    sys.path.insert(0, str(REPO / "gimp_plugin"))
    try:
        import liif_bridge_client as client
    finally:
        sys.path.remove(str(REPO / "gimp_plugin"))
    from liif_jax.constants import PRECISIONS

    values = [value for value, _ in client.PRECISION_CHOICES]
    assert values[0] == "auto" and tuple(values[1:]) == PRECISIONS
