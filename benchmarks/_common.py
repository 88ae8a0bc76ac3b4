"""Helpers shared by the benchmark scripts: timing, machine info, RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def machine() -> str:
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}; {os.cpu_count()} cores; {mem:.0f} GiB RAM; Python {platform.python_version()}; "
            f"torch {torch.__version__}; numpy {numpy.__version__}; torch threads {torch.get_num_threads()}")


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section '## name' of RESULTS.md."""
    header = "# actstore benchmark results\n\nEach section is rewritten by the script named in it.\n"
    text = RESULTS.read_text() if RESULTS.exists() else header
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")
