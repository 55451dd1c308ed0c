"""The ``liif-jax`` command: a thin layer over the library.

- ``parser``: help texts, argument types, ``build_parser``;
- ``commands``: one ``run_*`` per command, calling the library and printing its results;
- ``output``: the progress bar, one-line messages and warnings;
- here: ``run``, the one place every library error becomes one line on stderr and an exit
  code (the error class's ``exit_code``; Ctrl+C is 130), and the entry points.
"""

from __future__ import annotations

import os
import sys
import warnings

from liif_jax.cli.output import PROG, Progress, show_warning
from liif_jax.cli.parser import build_parser, convert_parser
from liif_jax.errors import LiifError, one_line

__all__ = ["PROG", "build_parser", "convert_main", "main", "run"]

# The names these had when the command was one module (tests use them).
_Progress = Progress
_show_warning = show_warning


def run(args, prog: str = PROG) -> int:
    """Run parsed ``args``; every failure becomes one line on stderr and an exit code."""
    warnings.showwarning = show_warning
    try:
        return args.run(args)
    except LiifError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{prog}: error: out of memory (try a smaller output)", file=sys.stderr)
        return 1
    except Exception as exc:  # never a traceback for a user, unless they ask for one
        if os.environ.get("LIIF_JAX_DEBUG"):
            raise
        print(f"{prog}: internal error: {type(exc).__name__}: {one_line(exc)[:300]} "
              f"(set LIIF_JAX_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def main(argv=None, prog: str = PROG) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return run(args, prog)


def convert_main(argv=None, prog: str = "python -m convert_weights") -> int:
    """Entry point of ``python -m convert_weights``: the ``convert`` command on its own."""
    return run(convert_parser(prog).parse_args(argv), prog)
