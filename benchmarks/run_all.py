"""Run every benchmark; each rewrites its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUNS = (  # the limits first: every other figure is read against them
    ["limits.py"], ["bench_capture.py"], ["bench_capture.py", "--all-tokens"], ["bench_stats.py"],
    ["bench_covariance.py"], ["bench_ingest.py"], ["bench_read_path.py"], ["bench_codecs.py"], ["bench_steering.py"],
    ["bench_peers.py"],
    ["bench_eval.py"], ["bench_sweep.py"],
)

for script, *args in RUNS:
    print(f"== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)
