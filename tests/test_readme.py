"""Every Python block of README.md and docs/*.md runs as written (issue 11, item 13).

A block fenced as ```python is run, in a fresh namespace, in a temporary folder that stands
for the clone's folder (``tests/`` there is this checkout's, so blocks may read its
fixtures; what they write stays in the temporary folder). There is no opt-out marker: a
block that cannot run here (it needs Beam, a GPU, a file the reader has) is not fenced as
``python`` -- ``sh`` or a plain fence -- and other Python-ish fence names (``py``,
``python3``, ``pycon``) are refused, so nothing slips past as "Python that is not checked".
"""

import re

import pytest

from conftest import REPO

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def fenced_blocks(path):
    """(info string, first line number, text) of every fenced block of a Markdown file."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if current is None:
            if m:
                current = (m["fence"], m["info"].strip(), number + 1, [])
        elif m and m["fence"].startswith(current[0]) and not m["info"].strip():
            blocks.append((current[1], current[2], "\n".join(current[3]) + "\n"))
            current = None
        else:
            current[3].append(line)
    assert current is None, f"{path.name}: the block opened at line {current[2] - 1} is never closed"
    return blocks


def python_blocks():
    return [pytest.param(path, line, text, id=f"{path.name}:{line}")
            for path in DOCS for info, line, text in fenced_blocks(path) if info == "python"]


def test_python_blocks_are_found_and_none_hides_under_another_name():
    found = {f"{p.values[0].name}:{p.values[1]}" for p in python_blocks()}
    readme = [name for name in found if name.startswith("README.md:")]
    assert len(readme) >= 2, found  # the Python API and the bridge example at least
    odd = [(path.name, line, info) for path in DOCS for info, line, _ in fenced_blocks(path)
           if info != "python" and info.split()[:1] and info.split()[0].lower().startswith("py")]
    assert not odd, f"Python-like fences the README test would not run: {odd}"


@pytest.mark.parametrize("path, line, text", python_blocks())
def test_python_block_runs_as_written(path, line, text, tmp_path, monkeypatch):
    (tmp_path / "tests").symlink_to(REPO / "tests", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    code = compile(text, f"{path.relative_to(REPO)}, block at line {line}", "exec")
    exec(code, {"__name__": "__main__"})  # noqa: S102 - the documentation's own code
