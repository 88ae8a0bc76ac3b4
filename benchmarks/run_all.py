"""Run every benchmark; each rewrites its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("bench_capture.py", "bench_stats.py", "bench_codecs.py", "bench_steering.py", "bench_peers.py",
               "bench_eval.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
