"""A sweep killed at EVERY write it makes to its folder, and a full disk at every write.

Every byte a sweep puts in its folder (results.csv, items.csv, windows.csv, baseline.json,
frontier.csv, contrasts.csv, steerability.csv, results.md, the plots) goes through
``actstore.evaluation.files._write_bytes``. The tests count the writes of an uninterrupted
small sweep (the baseline, two configurations, the report), then for each write N:

* kill: the N-th write puts down half its bytes and the process "dies" (a BaseException no
  ``except`` of the code stops; it skips the clean-ups a real kill skips), every later write
  fails the same way;
* full disk: the N-th write puts down half its bytes and fails with ``ENOSPC``, as a full
  disk does.

Then the same sweep runs again to the end, and the folder must hold exactly what an
uninterrupted run writes (results.csv but its ``seconds``, items.csv, windows.csv and the
report's tables, every float equal), and no configuration committed before the failure may
be measured again. A full disk ends in an error that names the file and the disk and says
that the same command resumes the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import actstore
from actstore.evaluation import files
from actstore.evaluation.ledger import Ledger
from actstore.evaluation.protocols import ABLetters
from actstore.evaluation.request import SweepRequest
from actstore.evaluation.rows import KEY
from actstore.evaluation.scoring import ABItem, PerplexityWindows
from actstore.evaluation.sweep import run_sweep

ITEMS = [ABItem(f"Question {i}: would you{' really' * (i % 3)} help?\n\nChoices:\n(A) Yes\n(B) No\n",
                "AB"[i % 2], "BA"[i % 2], f"item {i + 1}") for i in range(4)]
TEXT = ("The quick brown fox jumps over the lazy dog. Steering vectors add a direction to the residual "
        "stream at every token. I told my baby I loved her when she cried. ") * 2
ALPHAS = (4.0, 8.0)
TABLES = ("results.csv", "items.csv", "windows.csv", "frontier.csv", "contrasts.csv", "steerability.csv",
          "separation.csv")


class Killed(BaseException):
    """The process 'died' here."""


@contextlib.contextmanager
def failing_at(n: int, how: str = "kill", keep=lambda data: len(data) // 2):
    """The ``n``-th write to a sweep folder puts down ``keep(data)`` of its bytes (default half),
    then fails (``how``: "kill" or "full", an ``ENOSPC``), and so does every write after it (0:
    none fails). Yields the count, the name of each file written and whether it was an append."""
    seen = {"writes": 0, "files": [], "appends": []}
    original = files._write_bytes

    def write(handle, data):
        seen["writes"] += 1
        seen["files"].append(Path(handle.name).name.removeprefix(".").removesuffix(files.PARTIAL))
        seen["appends"].append("a" in handle.mode)
        if n and seen["writes"] >= n:
            if seen["writes"] == n:
                original(handle, data[: keep(data)])
                handle.flush()
            if how == "kill":
                raise Killed(f"write {seen['writes']}")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(handle, data)

    files._write_bytes = write
    try:
        yield seen
    finally:
        files._write_bytes = original


@contextlib.contextmanager
def counting_measurements():
    """The configurations the ledger records (the steered ones by key, the baseline as "baseline")."""
    recorded = []
    record, record_baseline = Ledger.record, Ledger.record_baseline

    def counted(self, row, items, *args, **kwargs):
        recorded.append(items.key.as_tuple())
        return record(self, row, items, *args, **kwargs)

    def counted_baseline(self, *args, **kwargs):
        recorded.append("baseline")
        return record_baseline(self, *args, **kwargs)

    Ledger.record, Ledger.record_baseline = counted, counted_baseline
    try:
        yield recorded
    finally:
        Ledger.record, Ledger.record_baseline = record, record_baseline


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dirs):
    tmp = tmp_path_factory.mktemp("sweep-killpoints")
    llama = actstore.load_model(str(tiny_model_dirs["llama"]))
    pairs = tmp / "pairs.json"
    pairs.write_text(json.dumps([{"positive": f"I kept promise {i}.", "negative": f"I broke promise {i}."}
                                 for i in range(6)]))
    store, heldout = tmp / "s.zarr", tmp / "heldout.zarr"
    actstore.capture_to_store(llama, pairs, store, layers="2", progress=False)
    actstore.capture_to_store(llama, pairs, heldout, layers="2", progress=False)  # each vector's separation.csv row
    small = small_sweep(llama, store, heldout, tmp / "reference")
    sweep(small, small.reference)
    return small


def small_sweep(llama, store: Path, heldout: Path, reference: Path) -> Sweep:
    ids = llama.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:64]
    # two documents of two 16-token windows each: the perplexity's interval has units to resample
    windows = PerplexityWindows.from_tagged(llama.tokenizer, [(i // 2, ids[i * 16:(i + 1) * 16]) for i in range(4)],
                                            16)
    return Sweep(llama, Path(store), Path(heldout), ABLetters(llama.tokenizer, ITEMS, both_orders=True), windows,
                 Path(reference))


@dataclass(frozen=True)
class Sweep:
    """The small sweep every test runs, and its folder run without interruption (``reference``)."""

    llama: object
    store: Path
    heldout: Path
    on_target: ABLetters
    windows: PerplexityWindows
    reference: Path


def sweep(small: Sweep, out: Path):
    request = SweepRequest(store=small.store, out=out, layers=(2,), ks=(4,), alphas=ALPHAS, methods=("enr",),
                           budgets=(1.05,), on_target=small.on_target, perplexity=small.windows, behavior="toy",
                           progress=False, heldout_store=small.heldout)
    return run_sweep(small.llama, request)


def table(path: Path):
    frame = pd.read_csv(path, dtype={"k": str, "method": str, "item": str})
    frame = frame.drop(columns=["seconds"], errors="ignore")  # the time each configuration took
    by = [c for c in (*KEY, "item", "order", "window", "budget", "contrast") if c in frame]
    return frame.sort_values(by, kind="stable").reset_index(drop=True)


def assert_same_folder(out: Path, reference: Path, point: str) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(table(out / name), table(reference / name), check_exact=True, obj=point)
    assert json.loads((out / "baseline.json").read_text()) == json.loads((reference / "baseline.json").read_text())
    assert (out / "results.md").read_text().startswith("# Steering sweep")
    for plot in ("frontier_toy.png", "separation_toy.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (point, plot)
    assert not [p.name for p in out.iterdir() if p.name.endswith((files.PARTIAL, ".tmp"))], point


def committed(out: Path) -> tuple[set, bool]:
    """The configurations results.csv holds, and whether baseline.json is written."""
    results = out / "results.csv"
    done = set()
    if results.exists() and results.stat().st_size:
        frame = pd.read_csv(results, dtype={"k": str, "method": str})
        done = {(int(r.layer), r.method, r.k, float(r.alpha)) for r in frame[KEY].itertuples(index=False)}
    return done, (out / "baseline.json").exists()


def resume_and_check(setup, out: Path, point: str) -> None:
    done, baseline_written = committed(out)
    with counting_measurements() as recorded:
        sweep(setup, out)
    every = {(2, "enr", "4", alpha) for alpha in ALPHAS}
    want = sorted(every - done) + ([] if baseline_written else ["baseline"])
    # each configuration not committed is measured once; none committed is measured again
    assert sorted(recorded, key=str) == sorted(want, key=str), (point, recorded, done)
    assert_same_folder(out, setup.reference, point)


def test_a_sweep_killed_at_every_write_resumes_to_the_uninterrupted_folder(setup, tmp_path):
    with failing_at(0) as seen:
        sweep(setup, tmp_path / "count")
    total = seen["writes"]
    written = set(seen["files"])
    # every file of the folder is among the write points
    assert {*TABLES, "baseline.json", "results.md", "frontier_toy.png", "separation_toy.png"} <= written, written
    assert_same_folder(tmp_path / "count", setup.reference, "uninterrupted")
    for n in range(1, total + 1):
        out = tmp_path / f"kill{n}"
        point = f"killed at write {n} of {total} ({seen['files'][n - 1]})"
        with pytest.raises(Killed), failing_at(n):
            sweep(setup, out)
        resume_and_check(setup, out, point)
    resume_and_check(setup, tmp_path / "count", f"killed after the last write ({total})")  # measures nothing
    print(f"sweep: {total} kill points tried ({', '.join(seen['files'])}), each resumed to the same folder")


def test_an_append_killed_after_its_first_bytes_resumes(setup, tmp_path):
    """A kill that leaves only the start of an append: a cut header, or a first row cut with no
    whole row before it (the next append must not run on from the cut bytes)."""
    with failing_at(0) as seen:
        sweep(setup, tmp_path / "count")
    appends = [n for n in range(1, seen["writes"] + 1) if seen["appends"][n - 1]]
    assert {seen["files"][n - 1] for n in appends} == {"items.csv", "windows.csv"}
    for n in appends:
        for cut in (3, "header+3"):
            out = tmp_path / f"cut{n}-{cut}"
            point = f"killed {cut} bytes into write {n} ({seen['files'][n - 1]})"
            keep = (lambda data: 3) if cut == 3 else (lambda data: data.index(b"\n") + 4)
            with pytest.raises(Killed), failing_at(n, keep=keep):
                sweep(setup, out)
            resume_and_check(setup, out, point)


def test_a_resume_killed_at_every_write_resumes_again(setup, tmp_path):
    """The writes a resume makes to clean the folder up (the rows of a configuration that was
    not committed dropped) and to finish it, each killed in turn."""
    with failing_at(0) as seen:
        sweep(setup, tmp_path / "count")
    second_commit = [i for i, name in enumerate(seen["files"], 1) if name == "results.csv"][1]
    killed = tmp_path / "killed"
    with pytest.raises(Killed), failing_at(second_commit):  # the 2nd configuration's rows are in, not its row
        sweep(setup, killed)
    with failing_at(0) as resumed:
        shutil.copytree(killed, tmp_path / "count-resume")
        sweep(setup, tmp_path / "count-resume")
    total = resumed["writes"]
    assert resumed["files"][:2] == ["results.csv", "items.csv"], resumed["files"]  # the clean-up comes first
    for n in range(1, total + 1):
        out = tmp_path / f"again{n}"
        shutil.copytree(killed, out)
        point = f"resume killed at write {n} of {total} ({resumed['files'][n - 1]})"
        with pytest.raises(Killed), failing_at(n):
            sweep(setup, out)
        resume_and_check(setup, out, point)
    print(f"resume: {total} kill points tried ({', '.join(resumed['files'])}), each resumed again")


CHILD = """
import os, sys
sys.path.insert(0, sys.argv[1])
import actstore
import test_sweep_killpoints as kill
from actstore.evaluation import files
model, store, heldout, out, n = sys.argv[2:7]
small = kill.small_sweep(actstore.load_model(model), store, heldout, out)
count, original = [0], files._write_bytes
def write(handle, data):
    count[0] += 1
    if count[0] == int(n):
        original(handle, data[: len(data) // 2])
        handle.flush()
        os._exit(17)  # a real death: no finally, no clean-up, the lock let go by the OS
    return original(handle, data)
files._write_bytes = write
kill.sweep(small, out)
"""


def test_real_process_deaths_mid_append_and_mid_commit_resume(setup, tmp_path, tiny_model_dirs):
    """The in-process simulation against real ``os._exit`` deaths: in the middle of a
    configuration's items, of its commit, and of the report."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with failing_at(0) as seen:
        sweep(setup, tmp_path / "count")
    points = [seen["files"].index("items.csv", 1) + 1, seen["files"].index("results.csv") + 1,
              seen["files"].index("results.md") + 1]
    for n in points:
        out = tmp_path / f"exit{n}"
        died = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).parent), str(tiny_model_dirs["llama"]),
                               str(setup.store), str(setup.heldout), str(out), str(n)], env=env, capture_output=True,
                              text=True)
        assert died.returncode == 17, died.stderr[-2000:]
        name = seen["files"][n - 1]
        if name == "items.csv":  # the death left what the resume must clean: a cut line, a partial file
            assert not (out / name).read_bytes().endswith(b"\n")
        else:
            assert (out / f".{name}{files.PARTIAL}").exists()
        resume_and_check(setup, out, f"os._exit at write {n} ({name})")


def test_a_full_disk_at_every_write_is_named_and_the_folder_resumes(setup, tmp_path):
    with failing_at(0) as seen:
        sweep(setup, tmp_path / "count")
    total = seen["writes"]
    for n in range(1, total + 1):
        out = tmp_path / f"full{n}"
        point = f"disk full at write {n} of {total} ({seen['files'][n - 1]})"
        with pytest.raises(actstore.ActstoreError) as failed, failing_at(n, "full"):
            sweep(setup, out)
        message = str(failed.value)
        assert f"cannot write {str(out / seen['files'][n - 1])!r}: the disk is full (the disk mounted at" in message, \
            (point, message)
        assert "run the same command again to resume it" in message, point
        # the failed write left nothing behind: no partial file, no half line at the end of a table
        assert not [p.name for p in out.iterdir() if p.name.endswith(files.PARTIAL)], point
        for name in ("items.csv", "windows.csv"):
            if (out / name).exists() and (out / name).stat().st_size:
                assert (out / name).read_bytes().endswith(b"\n"), (point, name)
        resume_and_check(setup, out, point)


def test_a_damaged_separation_row_costs_only_its_vectors_configurations(setup, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(setup.reference, out)
    path = out / "separation.csv"
    header, row = path.read_bytes().splitlines(keepends=True)
    fields = row.split(b",")
    fields[header.split(b",").index(b"auroc")] = b"0.\xff"  # its AUROC damaged by a byte that is not UTF-8
    path.write_bytes(header + b",".join(fields))
    with counting_measurements() as recorded:
        sweep(setup, out)
    assert sorted(recorded) == [(2, "enr", "4", alpha) for alpha in ALPHAS]  # the vector's configurations
    assert_same_folder(out, setup.reference, "separation.csv damaged")


def test_a_full_disk_in_the_cli_is_one_error_line_and_the_same_command_resumes(setup, tmp_path, run,
                                                                               tiny_model_dirs):
    store = setup.store
    ab = tmp_path / "ab.json"
    ab.write_text(json.dumps([{"positive": i.prompt + f"({i.matching})", "negative": i.prompt + f"({i.other})"}
                              for i in ITEMS]))
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "sweep"
    args = ["eval", "-q", "--model", tiny_model_dirs["llama"], "--store", store, "--data-test", ab, "--text", text,
            "--ppl-tokens", "64", "--ppl-window", "16", "--layers", "2", "--k", "4", "--alpha", "4,8",
            "--no-separation", "--out", out]
    with failing_at(0) as seen:
        assert run(*args[:-1], tmp_path / "count").exit_code == 0
    point = seen["files"].index("results.csv", seen["files"].index("results.csv") + 1) + 1  # the 2nd commit
    with failing_at(point, "full"):
        failed = run(*args)
    last = failed.output.splitlines()[-1]  # (model loading may print a progress bar before it)
    assert failed.exit_code == 1 and last.startswith(f"Error: cannot write {str(out / 'results.csv')!r}: the disk is "
                                                     "full (the disk mounted at"), failed.output
    assert "run the same command again" in last and "Traceback" not in failed.output
    assert len(pd.read_csv(out / "results.csv")) == 1  # the first configuration is kept
    with counting_measurements() as recorded:
        resumed = run(*args)
    assert resumed.exit_code == 0, resumed.output
    assert recorded == [(2, "enr", "4", 8.0)]
    for name in ("results.csv", "items.csv", "windows.csv"):
        pd.testing.assert_frame_equal(table(out / name), table(tmp_path / "count" / name), check_exact=True)


@pytest.mark.parametrize("content, kept", [(b"", b""), (b"lay", b""), (b"a,b\n1,2\n", b"a,b\n1,2\n"),
                                           (b"a,b\n1,2\n3,", b"a,b\n1,2\n"),
                                           (b"x" * 70_000 + b"\n" + b"y" * 140_000, b"x" * 70_000 + b"\n"),
                                           (b"y" * 140_000, b"")])
def test_the_next_writer_cuts_off_a_line_a_kill_cut(tmp_path, content, kept):
    path = tmp_path / "items.csv"
    path.write_bytes(content)
    assert files.drop_cut_line(path) == (kept != content)
    assert path.read_bytes() == kept
