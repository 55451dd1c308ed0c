"""The benchmark scripts stay runnable (their figures are never asserted: README quotes them
with the commands that printed them)."""

import json
import os
import subprocess
import sys

from conftest import REPO


def run_script(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_gpu_check_runs_every_section_in_smoke_mode(tmp_path):
    # The GPU check is meant for a machine we rarely have: this keeps it working on any
    # backend with tiny sizes, so the day a GPU is lent the one command just runs.
    out = tmp_path / "check.json"
    proc = run_script("benchmarks/gpu_check.py", "--smoke", "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == ["parity", "throughput", "original", "big", "train", "chunks"]
    assert not [name for name, sec in sections.items() if "error" in sec], sections
    assert sections["parity"]["float32_ok"] and sections["parity"]["bfloat16_ok"]
    assert {r["precision"] for r in sections["throughput"]["rows"]} == {"float32", "bfloat16"}
    assert sections["original"] == {"skipped": "no --original DIR given",
                                    "seconds": sections["original"]["seconds"]}
    assert sections["big"]["shape"] == [80, 48, 3]
    assert sections["train"]["steps_per_s_highest"] > 0
    assert sections["train"]["grain_in_process_batches_per_s"] > 0  # grain is a core dependency
    assert sections["train"]["loader_threads"] <= sections["train"]["loader_cores"]
    assert "| parity, 3 goldens |" in proc.stdout


def test_host_overhead_benchmark_prints_its_figure():
    proc = run_script("benchmarks/bench_inference.py", "--host-overhead", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    cases = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(cases) == 3 and all(c["ms_per_output_mpx"] > 0 for c in cases)
    assert lines[-1].startswith("host overhead: ") and lines[-1].endswith(" ms per output Mpx")
