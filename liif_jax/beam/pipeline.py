"""The Beam pipeline of ``python -m liif_jax.beam`` (needs ``pip install '.[beam]' in the liif-jax checkout``)::

    python -m liif_jax.beam --input 'photos/**/*.png' --output out/ --scale 2 [Beam options]

What it adds over ``liif-jax upscale DIR`` and ``--distributed``: Beam's runner balances the
images over its workers, retries a worker that dies, and scales with the data set; the model
is loaded once per worker process (``LiifModelHandler.load_model``, RunInference's shared
model), and elements are batched by their output pixels. Everything about one image is the
code ``liif-jax upscale`` runs: each is read, rendered and written by
``liif_jax.folders.upscale_file`` -- so the outputs are the files ``liif-jax upscale`` writes,
bit for bit -- and lands at the path a folder run would give it
(``liif_jax.folders.output_path``, relative to the part of the glob before its first wildcard).

An image that fails (unreadable, too large, ...) becomes one line of ``OUTPUT/failed.jsonl``
(``{"path": ..., "reason": ...}``) and the others go on; a rerun skips every output that
exists, so it retries only the failures (``--overwrite`` redoes all).

Paths are local or any filesystem Beam knows (``gs://``, ``s3://``, ... with Beam's extras);
remote files are copied through a local temporary file, since the image codecs read paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import PurePosixPath

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from liif_jax.errors import LiifError, RequestError, one_line

PROG = "python -m liif_jax.beam"
FAILED_NAME = "failed.jsonl"
WILDCARDS = "*?["


@dataclass(frozen=True)
class Job:
    src: str  # input path (local or a Beam filesystem URL)
    dst: str  # output path
    rel: str  # the input relative to the glob's base (how it is named in messages)
    pixels: int  # output pixels the request will give (0 if unknown): the batching weight


@dataclass(frozen=True)
class Outcome:
    job: Job
    error: str | None = None  # one line; None when written


def glob_base(pattern: str) -> str:
    """The folder part of ``pattern`` before its first wildcard, with its slash
    ('photos/**/*.png' -> 'photos/'; 'a.png' -> ''): outputs keep the path below it."""
    cut = min((pattern.index(c) for c in WILDCARDS if c in pattern), default=len(pattern))
    head = pattern[:cut]
    return head[:head.rindex("/") + 1] if "/" in head else ""


def plan_job(src: str, base: str, out_dir: str, fmt: str | None) -> Job:
    """The Job of one matched input: its output path by the folder rule of ``upscale``."""
    from liif_jax.folders import output_path

    rel = src[len(base):].lstrip("/") if base and src.startswith(base) else src.rsplit("/", 1)[-1]
    dst_rel = output_path(PurePosixPath("/"), PurePosixPath("/"), PurePosixPath("/") / rel, fmt)
    return Job(src, out_dir.rstrip("/") + "/" + str(dst_rel).lstrip("/"), rel, 0)


def _is_local(path: str) -> bool:
    return "://" not in path


class _LocalCopy:
    """A local path for ``path``: itself when local, else a temporary copy (inputs) or a
    temporary file uploaded on success (outputs)."""

    def __init__(self, path: str, upload: bool):
        self.path, self.upload, self.tmp = path, upload, None

    def __enter__(self) -> str:
        if _is_local(self.path):
            if self.upload:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            return self.path
        suffix = os.path.splitext(self.path)[1]
        fd, self.tmp = tempfile.mkstemp(suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            if not self.upload:
                with FileSystems.open(self.path) as remote:
                    f.write(remote.read())
        return self.tmp

    def __exit__(self, exc_type, *exc):
        if self.tmp is None:
            return
        try:
            if self.upload and exc_type is None:
                with open(self.tmp, "rb") as f, FileSystems.create(self.path) as remote:
                    remote.write(f.read())
        finally:
            os.unlink(self.tmp)


def upscale_request(ns):
    """The ``liif_jax.folders.UpscaleRequest`` of this command's options."""
    from liif_jax.cli.parser import size_fields
    from liif_jax.folders import UpscaleRequest

    return UpscaleRequest(**size_fields(ns.scale, ns.size), max_pixels=ns.max_pixels, tile=ns.tile,
                          max_memory=ns.max_memory, precision=ns.precision, quality=ns.quality)


class LiifModelHandler(ModelHandler):
    """RunInference's view of LIIF: ``load_model`` once per worker process (the bundled weights
    or ``--weights``, on whatever backend JAX finds there); ``run_inference`` upscales a batch
    of Jobs with ``liif_jax.folders.upscale_file`` (as the CLI does) and returns an Outcome per
    Job, a failure included (an image that fails must not fail its bundle: Beam would retry
    the whole bundle, then the job)."""

    def __init__(self, weights: str | None, options: argparse.Namespace, max_batch_pixels: int = 64 * 2**20):
        super().__init__()
        self.weights, self.options, self.max_batch_pixels = weights, options, max_batch_pixels

    def load_model(self):
        from liif_jax.weights import load_model

        return load_model(self.weights)

    def batch_elements_kwargs(self):
        # Batches by size: an image weighs its output pixels, a batch at most max_batch_pixels,
        # and images of like size (buckets split at 0.25, 1, 4, 16 Mpx) go together.
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_pixels, "element_size_fn": _job_weight,
                "length_fn": _job_weight, "bucket_boundaries": [2**18, 2**20, 2**22, 2**24]}

    def run_inference(self, batch, model, inference_args=None):
        return [self.upscale_one(job, model) for job in batch]

    def upscale_one(self, job: Job, model) -> Outcome:
        from liif_jax.folders import upscale_file
        from liif_jax.imageio import output_format

        try:
            output_format(job.dst)
            with _LocalCopy(job.src, upload=False) as src, _LocalCopy(job.dst, upload=True) as dst:
                upscale_file(src, dst, upscale_request(self.options), model)
            return Outcome(job)
        except LiifError as exc:
            return Outcome(job, one_line(exc))
        except OSError as exc:
            return Outcome(job, one_line(exc.strerror or exc))
        except MemoryError:
            return Outcome(job, "out of memory (try a smaller output or --max-memory)")

    def get_metrics_namespace(self) -> str:
        return "liif_jax"


def _job_weight(job: Job) -> int:
    return max(1, job.pixels)


def _with_weight(job: Job, options) -> Job:
    """The Job with its planned output pixels (from the header; 0 when unknown)."""
    from liif_jax.imageio import header_size

    if not _is_local(job.src):
        return job
    try:
        hw = header_size(job.src)
    except (LiifError, OSError):
        return job
    return Job(job.src, job.dst, job.rel, upscale_request(options).planned_pixels(hw))


def _exists(path: str) -> bool:
    if _is_local(path):
        return os.path.exists(path)
    return FileSystems.exists(path)


def _write_failures(lines: list, out_dir: str) -> None:
    """``OUTPUT/failed.jsonl`` of this run (sorted; removed when nothing failed)."""
    path = out_dir.rstrip("/") + "/" + FAILED_NAME
    if _is_local(path):
        from liif_jax.atomic import atomic_output

        if not lines:
            if os.path.exists(path):
                os.unlink(path)
            return
        os.makedirs(out_dir, exist_ok=True)
        with atomic_output(path) as f:
            f.write("".join(sorted(lines)).encode())
        return
    if lines:
        with FileSystems.create(path) as f:
            f.write("".join(sorted(lines)).encode())
    elif FileSystems.exists(path):
        FileSystems.delete([path])


def build(pipeline, ns):
    """The transforms, on ``pipeline``: match -> plan -> skip existing -> RunInference ->
    write failures. Counters ``upscaled``/``skipped``/``failed`` (namespace liif_jax)."""
    from liif_jax.imageio import IMAGE_EXTENSIONS

    upscaled, skipped, failed = (Metrics.counter("liif_jax", n) for n in ("upscaled", "skipped", "failed"))
    base = glob_base(ns.input)

    def not_done(job):
        if not ns.overwrite and _exists(job.dst):
            skipped.inc()
            return False
        return True

    def count(outcome):
        (failed if outcome.error else upscaled).inc()
        return outcome

    outcomes = (pipeline
                | "match" >> fileio.MatchFiles(ns.input)
                | "paths" >> beam.Map(lambda meta: meta.path)
                | "images" >> beam.Filter(lambda p: os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS)
                | "plan" >> beam.Map(plan_job, base, ns.output, ns.format)
                | "skip existing" >> beam.Filter(not_done)
                | "weigh" >> beam.Map(_with_weight, ns)
                | "upscale" >> RunInference(LiifModelHandler(ns.weights, ns, ns.max_batch_pixels))
                | "count" >> beam.Map(count))
    (outcomes
     | "failures" >> beam.Filter(lambda o: o.error is not None)
     | "as json" >> beam.Map(lambda o: json.dumps({"path": o.job.src, "reason": o.error}) + "\n")
     | "gather" >> beam.combiners.ToList()
     | "write failed.jsonl" >> beam.Map(_write_failures, ns.output))
    return outcomes


def build_parser() -> argparse.ArgumentParser:
    from liif_jax.api import DEFAULT_MAX_PIXELS
    from liif_jax.cli.parser import count_arg, memory_arg, quality_arg, scale_arg, size_arg, tile_arg
    from liif_jax.constants import PRECISIONS
    from liif_jax.imageio import DEFAULT_QUALITY, OUTPUT_FORMATS

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="Other options go to Beam (e.g. --runner DataflowRunner --project P "
                                       "--region R --temp_location gs://..., or --direct_num_workers 4).")
    p.add_argument("--input", required=True, metavar="GLOB", help="input images, e.g. 'photos/**/*.png' or gs://b/in/*")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (created)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", "-s", type=scale_arg, metavar="S[,SY]", help="scale factor (as upscale --scale)")
    size.add_argument("--size", type=size_arg, metavar="GEOMETRY", help="as upscale --size (1440x1080, 2000x, x1080, 400%%)")
    p.add_argument("--weights", metavar="FILE", help="weight file (default: the bundled EDSR-baseline-LIIF)")
    p.add_argument("--precision", choices=PRECISIONS, help="as upscale --precision")
    p.add_argument("--quality", type=quality_arg, default=DEFAULT_QUALITY, metavar="Q", help="JPEG/WebP quality")
    p.add_argument("--format", choices=sorted(e.lstrip(".") for e in OUTPUT_FORMATS), help="output format")
    p.add_argument("--max-pixels", type=count_arg, default=DEFAULT_MAX_PIXELS, metavar="N", help="as upscale")
    p.add_argument("--tile", type=tile_arg, metavar="N", help="as upscale --tile")
    p.add_argument("--max-memory", type=memory_arg, metavar="SIZE", help="as upscale --max-memory")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.add_argument("--max-batch-pixels", type=int, default=64 * 2**20, metavar="N",
                   help="output pixels per inference batch (default 64 Mi)")
    return p


def run(argv=None) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

    ns, beam_args = build_parser().parse_known_args(argv)
    if ns.weights is not None and _is_local(ns.weights) and not os.path.isfile(ns.weights):
        raise RequestError(f"--weights: no such weight file: {ns.weights}")
    if ns.max_batch_pixels < 1:
        raise RequestError(f"--max-batch-pixels must be >= 1, got {ns.max_batch_pixels}")
    if _is_local(ns.output) and os.path.exists(ns.output) and not os.path.isdir(ns.output):
        raise RequestError(f"--output must be a folder: {ns.output}")
    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = False
    pipeline = beam.Pipeline(options=options)
    build(pipeline, ns)
    result = pipeline.run()
    result.wait_until_finish()
    counts = _counters(result)
    failed = counts.get("failed", 0)
    note = f" (see {ns.output.rstrip('/')}/{FAILED_NAME})" if failed else ""
    print(f"{counts.get('upscaled', 0)} upscaled, {counts.get('skipped', 0)} skipped (already there; "
          f"--overwrite redoes them), {failed} failed{note}")  # the result: stdout, as upscale's
    return 1 if failed else 0


def _counters(result) -> dict:
    from apache_beam.metrics.metric import MetricsFilter

    try:
        found = result.metrics().query(MetricsFilter().with_namespace("liif_jax"))["counters"]
    except Exception:  # a runner without metrics: the summary is then unknown, not wrong
        return {}
    totals: dict = {}
    for c in found:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + (value or 0)
    return totals


def main(argv=None) -> int:
    try:
        return run(argv)
    except LiifError as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code

