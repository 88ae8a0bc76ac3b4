"""actstore against its peers on google/gemma-3-270m: steering-vectors and repeng.

    python benchmarks/bench_peers.py [--pairs 64] [--layer 6] [--offset 1] [--batch-size 8] [--repeats 3]

On the first N pairs of caa-pairs/sycophancy/train.json, at one layer, each tool
makes a vector from the same pairs; every run is a fresh subprocess that loads
the model, then fits (timed) and reports its peak RSS; medians of the repeats.

* actstore: ``capture_to_store`` (position ``last``, ``--offset``) + ``compute_stats``
  + the dense vector (``vector_from_stats(..., k=None)``: mean(pos) - mean(neg)).
* steering-vectors 0.12.2: ``train_steering_vector`` with ``read_token_index=-1-offset``
  (the same token: it counts from the last real token, as actstore's offset does)
  and its mean aggregator (the mean of paired differences = the same vector).
  Parity: ``|v_sv - v_actstore| / |v_actstore|``.
* repeng 0.4.0: ``ControlVector.train`` (``pca_diff``: first principal axis of the
  centred paired differences, unit norm, sign towards the positives). It always
  reads the last token, so its cosine is given against actstore's vector at
  ``--offset 0`` (same token) and at ``--offset``.

The peers pin transformers<5 (steering-vectors) and numpy<2 (repeng), so they
run in their own venv: ``$ACTSTORE_PEERS_PYTHON`` or ``--peers-python``, else
``.venv-peers`` in this repository (``make peers``: torch==2.13.0 first, then
requirements-peers.txt and this repository). actstore is measured in that venv
too (same torch/transformers as the peers) and, as a reference, in the running one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, git_rev, machine, peak_rss_mib, preamble, write_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEERS_VENV = REPO / ".venv-peers"  # what `make peers` builds from requirements-peers.txt
RESULT_PREFIX = "BENCH-RESULT "


@dataclass
class Task:
    """What one worker process does: ``tool`` fits a vector from ``data`` at ``layer``."""

    tool: str  # "actstore" | "steering-vectors" | "repeng"
    model: str
    data: str
    layer: int
    offset: int
    batch_size: int
    out: str  # .npy file for the vector


@dataclass
class Runs:
    """The repeats of one (tool, interpreter, offset) configuration."""

    label: str
    python: str
    tool: str
    offset: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_rss_mib: list[float] = field(default_factory=list)
    load_rss_mib: list[float] = field(default_factory=list)
    versions: str = ""
    vector: np.ndarray | None = None


# Worker side: runs in a fresh process, possibly under the peers' interpreter.


def _load(model_path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # Right padding: the peers pass no position ids, so left padding would shift
    # the positions of shorter texts (actstore counts positions over real tokens).
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return model, tokenizer


def _pairs(path: str) -> list[tuple[str, str]]:
    return [(pair["positive"], pair["negative"]) for pair in json.loads(Path(path).read_text())]


def _actstore(task: Task) -> Callable[[], np.ndarray]:
    import actstore
    from actstore.models.load import load_model

    loaded = load_model(task.model)
    store = Path(task.out).with_suffix(".zarr")
    shutil.rmtree(store, ignore_errors=True)

    def fit() -> np.ndarray:
        actstore.capture_to_store(loaded, task.data, store, layers=str(task.layer), position="last", offset=task.offset,
                                  batch_size=task.batch_size, progress=False)
        stats = actstore.compute_stats(store)
        return actstore.vectors.build.vector_from_stats(stats, task.layer, None).vector

    return fit


def _steering_vectors(task: Task) -> Callable[[], np.ndarray]:
    from steering_vectors import train_steering_vector

    model, tokenizer = _load(task.model)

    def fit() -> np.ndarray:
        sv = train_steering_vector(model, tokenizer, _pairs(task.data), layers=[task.layer],
                                   read_token_index=-1 - task.offset, batch_size=task.batch_size)
        return sv.layer_activations[task.layer].float().numpy()

    return fit


def _repeng(task: Task) -> Callable[[], np.ndarray]:
    from repeng import ControlVector, DatasetEntry

    model, tokenizer = _load(task.model)
    dataset = [DatasetEntry(positive, negative) for positive, negative in _pairs(task.data)]

    def fit() -> np.ndarray:
        cv = ControlVector.train(model, tokenizer, dataset, hidden_layers=[task.layer],
                                 batch_size=task.batch_size, method="pca_diff")
        return np.asarray(cv.directions[task.layer], np.float32)

    return fit


# tool -> loads the model, returns the fit to time
PREPARE = {"actstore": _actstore, "steering-vectors": _steering_vectors, "repeng": _repeng}


def run_worker(task: Task) -> None:
    """Load, fit (timed: wall and CPU seconds), save the vector to ``task.out`` and
    print one JSON line of figures."""
    import torch
    import transformers

    fit = PREPARE[task.tool](task)
    load_rss = peak_rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    vector = fit()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    np.save(task.out, np.asarray(vector, np.float32), allow_pickle=False)
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}"
    figures = {"seconds": wall, "cpu_seconds": cpu, "load_rss_mib": load_rss, "peak_rss_mib": peak_rss_mib(),
               "versions": versions}
    print(RESULT_PREFIX + json.dumps(figures), flush=True)


# Driver side.


def peers_python(explicit: str | None) -> str:
    """The interpreter that has both peers, creating the default venv if needed."""
    chosen = explicit or os.environ.get("ACTSTORE_PEERS_PYTHON")
    if chosen:
        return chosen
    probe = subprocess.run([sys.executable, "-c", "import steering_vectors, repeng"], check=False, capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    python = DEFAULT_PEERS_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {DEFAULT_PEERS_VENV} for the peers (make peers; a few minutes, once)", flush=True)
        subprocess.run(["make", "-C", str(REPO), "peers"], check=True)
    return str(python)


def measure(runs: Runs, task: Task) -> None:
    """One fresh worker process; appends its figures to ``runs``."""
    command = [runs.python, str(Path(__file__).resolve()), "--worker", json.dumps(task.__dict__)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.exit(f"{runs.label} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    figures = json.loads(lines[-1][len(RESULT_PREFIX):])
    runs.seconds.append(figures["seconds"])
    runs.cpu_seconds.append(figures["cpu_seconds"])
    runs.peak_rss_mib.append(figures["peak_rss_mib"])
    runs.load_rss_mib.append(figures["load_rss_mib"])
    runs.versions = figures["versions"]
    runs.vector = np.load(task.out, allow_pickle=False)
    print(f"  {runs.label}: {figures['seconds']:.2f} s (CPU {figures['cpu_seconds']:.2f} s), "
          f"peak RSS {figures['peak_rss_mib']:.0f} MiB", flush=True)


def relative_difference(vector: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(vector.astype(np.float64) - reference) / np.linalg.norm(reference))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--offset", type=int, default=1, help="tokens before the last (1: the A/B answer letter)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers-python", help="interpreter with steering-vectors and repeng installed")
    parser.add_argument("--growth", type=int, default=4,
                        help="also run actstore (own venv) once on this many times the pairs: memory as the set grows")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(Task(**json.loads(args.worker)))
        return

    setup = preamble("peers", "sycophancy", args.pairs, load=False)
    model, work, data = setup.model_path, setup.work, setup.data
    peers = peers_python(args.peers_python)
    configurations = [
        Runs("actstore", peers, "actstore", args.offset),
        Runs("steering-vectors", peers, "steering-vectors", args.offset),
        Runs("repeng", peers, "repeng", 0),
        Runs("actstore (own venv)", sys.executable, "actstore", args.offset),
    ]
    same_token_as_repeng = Runs("actstore, offset 0", peers, "actstore", 0)
    try:
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
            for runs in configurations:
                measure(runs, Task(runs.tool, model, str(data), args.layer, runs.offset, args.batch_size,
                                   str(work / f"{runs.label}.npy")))
        if args.offset != 0:
            measure(same_token_as_repeng, Task("actstore", model, str(data), args.layer, 0, args.batch_size,
                                               str(work / "offset0.npy")))
        else:
            same_token_as_repeng = configurations[0]
        grown = None
        if args.growth > 1:
            all_pairs = json.loads((SHARED_DATA / "caa-pairs" / "sycophancy" / "train.json").read_text())
            bigger = work / "more-pairs.json"
            bigger.write_text(json.dumps(all_pairs[: args.pairs * args.growth]))
            grown = Runs(f"actstore (own venv), {len(all_pairs[: args.pairs * args.growth])} pairs", sys.executable,
                         "actstore", args.offset)
            measure(grown, Task("actstore", model, str(bigger), args.layer, args.offset, args.batch_size,
                                str(work / "grown.npy")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, configurations, same_token_as_repeng, grown)


def report(args, configurations: list[Runs], same_token_as_repeng: Runs, grown: Runs | None = None) -> None:
    actstore_peers, steering_vectors, repeng, actstore_own = configurations
    reference = actstore_peers.vector.astype(np.float64)
    vs = {
        "actstore": "reference",
        "steering-vectors": f"rel. diff {relative_difference(steering_vectors.vector, reference):.1e}",
        "repeng": (f"cosine {cosine(repeng.vector, same_token_as_repeng.vector):.3f} (last token), "
                   f"{cosine(repeng.vector, reference):.3f} (offset {args.offset})"),
        "actstore (own venv)": f"rel. diff {relative_difference(actstore_own.vector, reference):.1e}",
    }
    base_cpu = statistics.median(actstore_peers.cpu_seconds)
    rows = []
    for runs in configurations:
        seconds, cpu = statistics.median(runs.seconds), statistics.median(runs.cpu_seconds)
        peak, after_load = statistics.median(runs.peak_rss_mib), statistics.median(runs.load_rss_mib)
        rows.append(f"| {runs.label} | {runs.versions} | {seconds:.2f} | {cpu:.2f} | {cpu / base_cpu:.1f}x | "
                    f"{peak:.0f} | {after_load:.0f} | {vs[runs.label]} |")
        print(f"{runs.label}: median {seconds:.2f} s ({', '.join(f'{t:.2f}' for t in runs.seconds)}), "
              f"CPU {cpu:.2f} s; peak RSS {peak:.0f} MiB (after load {after_load:.0f}); {vs[runs.label]}")
    parity = relative_difference(steering_vectors.vector, reference)
    print(f"steering-vectors parity: {parity:.2e} (target 1e-4: {'met' if parity <= 1e-4 else 'NOT met'})")
    wall = statistics.median(actstore_peers.seconds) / statistics.median(steering_vectors.seconds)
    memory = statistics.median(actstore_peers.peak_rss_mib) / statistics.median(steering_vectors.peak_rss_mib)
    targets = (f"actstore / steering-vectors, same venv: wall time **{wall:.3f}x** (target <= 0.15x: "
               f"{'met' if wall <= 0.15 else 'missed'}), peak memory **{memory:.2f}x** (target <= 0.4x: "
               f"{'met' if memory <= 0.4 else 'missed'}).")
    if grown is not None:
        base = statistics.median(actstore_own.peak_rss_mib)
        targets += (f" As the set grows {args.growth}x ({grown.label}): actstore peak RSS {grown.peak_rss_mib[0]:.0f} "
                    f"MiB vs {base:.0f} MiB (**{grown.peak_rss_mib[0] / base:.2f}x**), fit {grown.seconds[0]:.1f} s.")
    print(targets)
    command = (f"python benchmarks/bench_peers.py --pairs {args.pairs} --layer {args.layer} --offset {args.offset} "
               f"--batch-size {args.batch_size} --repeats {args.repeats} --growth {args.growth}")
    write_section(
        "Peers: steering-vectors and repeng (bench_peers.py)",
        f"`{command}` at {git_rev()}\n\n"
        f"Machine: {machine()}\n\n"
        f"google/gemma-3-270m (float32, CPU), first {args.pairs} pairs of caa-pairs/sycophancy/train.json, "
        f"layer {args.layer} of 18 (output of decoder block {args.layer}), token: the last minus {args.offset} "
        f"(repeng: always the last), batch {args.batch_size} texts. Each run is a fresh process; seconds are "
        f"the fit with the model loaded (actstore: capture + stats + dense vector, early exit after the layer; "
        f"the peers run the whole model and its LM head), wall and CPU (all threads; steadier than wall "
        f"time on a shared machine, and the ratio is taken on it); RSS is the process's peak (after load: "
        f"the peak once the model is loaded); medians of {args.repeats} runs. The peers and the first actstore "
        "row share one venv "
        "(the peers need transformers<5, numpy<2); the last row is actstore in its own venv.\n\n"
        "| tool | versions | fit s | fit CPU s | CPU vs actstore | peak RSS MiB | after load MiB "
        "| vector vs actstore |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\n{targets}\n\nsteering-vectors' mean-of-differences vector equals actstore's dense vector to a relative "
        f"difference of **{parity:.1e}** (target 1e-4). repeng's `pca_diff` is a unit-norm principal axis "
        "of the centred differences, not their mean, hence a cosine rather than a difference.",
    )


if __name__ == "__main__":
    main()
