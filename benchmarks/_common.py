"""Helpers shared by the benchmark scripts: timing, machine info, RESULTS.md sections."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Preamble:
    """What most benchmarks start from: the demo model, a slice of a CAA pairs file
    written to a fresh temporary folder, and the pairs themselves."""

    model_path: str
    loaded: Any  # actstore LoadedModel, or None when the script loads the model elsewhere
    work: Path
    data: Path
    pairs: list[dict]


def preamble(name: str, behavior: str = "refusal", n_pairs: int | None = None, load: bool = True) -> Preamble:
    """The demo gemma-3-270m (loaded unless ``load`` is False), the first ``n_pairs`` pairs of
    caa-pairs/<behavior>/train.json in ``<work>/pairs.json``, and ``work``, a new temp folder."""
    from actstore.models.embedded import prepare_demo_model

    model_path = str(prepare_demo_model())
    loaded = None
    if load:
        from actstore.models.load import load_model

        loaded = load_model(model_path)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    pairs = json.loads((SHARED_DATA / "caa-pairs" / behavior / "train.json").read_text())[:n_pairs]
    data = work / "pairs.json"
    data.write_text(json.dumps(pairs))
    return Preamble(model_path, loaded, work, data, pairs)


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB, from /proc/self/status (VmHWM).

    Not ``ru_maxrss``: Linux carries that across exec, so a worker started by a big
    parent would report the parent's peak. ``ru_maxrss`` (KiB on Linux) only where
    /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
