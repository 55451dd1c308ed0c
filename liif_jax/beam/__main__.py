"""``python -m liif_jax.beam``: one line and exit code 2 when Apache Beam is missing."""

import logging
import sys


def main(argv=None) -> int:
    root = logging.getLogger()
    level = root.level
    # Beam's import warns on the root logger about optional cloud clients it did not find
    # (apitools, bigquery), which a local run does not use: keep stderr for this command's lines.
    root.setLevel(logging.ERROR)
    try:
        from liif_jax.beam.pipeline import main as pipeline_main
    except ImportError as exc:
        if "apache_beam" not in str(exc):
            raise
        print("python -m liif_jax.beam: error: Apache Beam is not installed (in the liif-jax checkout: pip install '.[beam]')",
              file=sys.stderr)
        return 2
    finally:
        root.setLevel(level)
    return pipeline_main(argv)


if __name__ == "__main__":
    sys.exit(main())
