"""What the ``liif-jax`` command shows besides its results: the program's name, one-line
messages, the progress bar and warnings (written so they never glue onto the bar's line)."""

from __future__ import annotations

import sys

from liif_jax.errors import LiifWarning, one_line

PROG = "liif-jax"




class Progress:
    """A tqdm bar on stderr (in output pixels) that appears only for work longer than about a
    second. ``for_image(offset)`` gives the callback for one image of a set."""

    def __init__(self, total: int, desc: str, quiet: bool):
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="px", unit_scale=True, delay=1.0,
                            file=sys.stderr, leave=False, dynamic_ncols=True)

    def for_image(self, offset: int, n_px: int):
        """Callback for one image whose share of the bar is ``n_px`` starting at ``offset``
        (the library's own total may count extra passes, e.g. for alpha)."""
        def callback(done: int, total: int):
            if self.bar is not None and total:
                self.bar.update(offset + int(n_px * done / total) - self.bar.n)
        return callback

    def write(self, line: str):
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def show_warning(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` while the command runs: one line, on the bar's terms."""
    prefix = "warning" if issubclass(category, LiifWarning) else category.__name__
    text = f"{PROG}: {prefix}: {one_line(message)}"
    if "tqdm" in sys.modules:  # a bar may be on screen: tqdm clears it, writes, redraws it
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)
