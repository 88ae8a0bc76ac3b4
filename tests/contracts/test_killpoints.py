"""A capture and a ``stats --force`` killed at EVERY write they make, one write at a time.

The kill is simulated in-process at the store's write path (zarr's ``LocalStore.set``,
``delete`` and ``delete_dir``): from the N-th write on, every write fails and nothing more
reaches the disk, exactly what a SIGKILL between two writes leaves (zarr writes each file
to a temporary name and renames it, so a single write is all or nothing). A subprocess
version with real ``os._exit`` at a few points checks that the simulation is faithful.
After each kill: the next command never crashes (``info`` and ``stats`` print their output
or an ``Error:`` line), and ``resume`` finishes bit-identically to an uninterrupted capture.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

import actstore


class Killed(BaseException):
    """The process 'died' here (a BaseException: no ``except Exception`` of the code under test stops it)."""


@contextlib.contextmanager
def killed_at(n: int):
    """Fail the ``n``-th store write and every one after it; yields the running count."""
    count = {"writes": 0}
    originals = {name: getattr(LocalStore, name) for name in ("set", "delete", "delete_dir")}

    def wrap(name):
        original = originals[name]

        async def write(self, *args, **kwargs):
            count["writes"] += 1
            if n and count["writes"] >= n:
                raise Killed(f"write {count['writes']}")
            return await original(self, *args, **kwargs)

        return write

    for name in originals:
        setattr(LocalStore, name, wrap(name))
    try:
        yield count
    finally:
        for name, original in originals.items():
            setattr(LocalStore, name, original)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dirs):
    tmp = tmp_path_factory.mktemp("killpoints")
    data = tmp / "pairs.json"
    data.write_text(json.dumps([{"positive": f"I kept promise {i}.", "negative": f"I broke promise {i}."}
                                for i in range(6)]))
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    reference = tmp / "reference.zarr"
    capture(model, data, reference)
    return model, data, reference


def capture(model, data, store):
    # window 4: three commits of 4 texts (8 rows) each, plus creation and the statistics cache
    return actstore.capture_to_store(model, data, store, layers="1,2", window=4, batch_size=2, resume=True,
                                     progress=False)


def assert_one_complete_run(store):
    runs = zarr.open_group(store, mode="r")["tiny-llama"].attrs["runs"]
    assert len(runs) == 1 and runs[0]["complete"]


def assert_next_command_does_not_crash(run, store, point):
    for args in (["info", store], ["stats", "-s", store, "-q"]):
        result = run(*args)
        assert "Traceback" not in result.output, (point, result.output)
        assert result.exit_code in (0, 1), (point, args, result.output, result.exception)
        if result.exit_code == 1:
            assert result.output.startswith("Error:") and isinstance(result.exception, SystemExit), (point, result)


def test_a_capture_killed_at_every_write_resumes_bit_identically(run, same_store, setup, tmp_path):
    model, data, reference = setup
    with killed_at(0) as count:
        capture(model, data, tmp_path / "count.zarr")
    total = count["writes"]
    assert total > 20, total
    resumed = 0
    for n in range(1, total + 1):
        store = tmp_path / f"kill{n}.zarr"
        with pytest.raises(Killed), killed_at(n):
            capture(model, data, store)
        if store.exists():
            assert_next_command_does_not_crash(run, store, f"capture killed at write {n}")
        capture(model, data, store)  # --resume
        same_store(store, reference)
        assert_one_complete_run(store)
        # a kill while the capture cached its statistics leaves none: the next stats computes them
        stats, want = actstore.compute_stats(store), actstore.open_stats(reference)
        np.testing.assert_allclose(stats["mean"].values, want["mean"].values, rtol=1e-12)
        resumed += 1
        shutil.rmtree(store)
    print(f"capture: {total} kill points tried, {resumed} resumed bit-identically")
    assert resumed == total


@contextlib.contextmanager
def killed_before_rename(n: int):
    """Die (:class:`Killed`) at the ``n``-th of zarr's renames of a written temporary file into place,
    and every one after: the file's bytes are on disk under ``<name>.<hex>.partial``, as a SIGKILL
    between the two leaves them (zarr removes its temporary file for an Exception, not for a death)."""
    from pathlib import Path

    count = {"renames": 0}
    original = Path.replace

    def replace(self, target):
        if self.name.endswith(".partial"):
            count["renames"] += 1
            if n and count["renames"] >= n:
                raise Killed(f"before rename {count['renames']}")
        return original(self, target)

    Path.replace = replace
    try:
        yield count
    finally:
        Path.replace = original


def stray_partials(store) -> list:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*.partial"))


def test_a_capture_killed_before_any_rename_resumes_and_leaves_no_temporary_file(run, same_store, setup, tmp_path):
    """Issue 31: a kill inside the first write left the store folder holding only zarr's temporary
    root file, which the next capture called 'not a Zarr store' (it could never be resumed), and a
    kill inside a chunk's write left its temporary file in the group for good."""
    model, data, reference = setup
    with killed_before_rename(0) as count:
        capture(model, data, tmp_path / "count.zarr")
    total = count["renames"]
    assert total > 20, total
    for n in sorted({1, 2, 3, total, *range(4, total, 4)}):  # the creation's, then a spread (a capture each)
        store = tmp_path / f"rename{n}.zarr"
        with pytest.raises(Killed), killed_before_rename(n):
            capture(model, data, store)
        if n == 1:
            assert [p.name for p in store.iterdir()] == stray_partials(store)  # nothing but the root's temporary
        assert stray_partials(store), n
        assert_next_command_does_not_crash(run, store, f"capture killed before rename {n}")
        capture(model, data, store)  # --resume
        same_store(store, reference)
        assert_one_complete_run(store)
        left = stray_partials(store)
        assert left == [], (n, left)
        shutil.rmtree(store)


def test_stats_force_killed_at_every_write_keeps_a_valid_cache(run, setup, tmp_path):
    _, _, reference = setup
    want = actstore.compute_stats(reference, force=True)
    base = tmp_path / "base.zarr"
    shutil.copytree(reference, base)
    with killed_at(0) as count:
        actstore.compute_stats(base, force=True)
    total = count["writes"]
    assert total >= 10, total
    for n in range(1, total + 1):
        store = tmp_path / f"stats{n}.zarr"
        shutil.copytree(base, store)
        with pytest.raises(Killed), killed_at(n):
            actstore.compute_stats(store, force=True)
        assert_next_command_does_not_crash(run, store, f"stats --force killed at write {n}")
        got = actstore.open_stats(store)  # the old cache, or the new one: never none, never a mix
        for name in ("count", "mean", "var"):
            np.testing.assert_array_equal(got[name].values, want[name].values)
        shutil.rmtree(store)
    print(f"stats --force: {total} kill points tried, a valid cache after each")


CHILD = """
import os, sys, json
from zarr.storage import LocalStore
import actstore
n, count = int(sys.argv[4]), [0]
for name in ("set", "delete", "delete_dir"):
    original = getattr(LocalStore, name)
    def make(original):
        async def write(self, *args, **kwargs):
            count[0] += 1
            if count[0] == n:
                os._exit(17)  # a real death: no finally, no flush
            return await original(self, *args, **kwargs)
        return write
    setattr(LocalStore, name, make(original))
actstore.capture_to_store(sys.argv[1], sys.argv[2], sys.argv[3], layers="1,2", window=4, batch_size=2, resume=True,
                          progress=False)
print(json.dumps(count[0]))
"""


def test_real_process_deaths_at_creation_and_commit_writes_resume(run, same_store, setup, tmp_path, tiny_model_dirs):
    """The in-process simulation against real ``os._exit`` deaths, at the store's first writes
    (root and group creation), a window's commit and the last write."""
    _, data, reference = setup
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    model = str(tiny_model_dirs["llama"])
    for n in (1, 2, 3, 12, 30):
        store = tmp_path / f"exit{n}.zarr"
        died = subprocess.run([sys.executable, "-c", CHILD, model, str(data), str(store), str(n)], env=env,
                              capture_output=True, text=True)
        assert died.returncode == 17, died.stderr[-2000:]
        if store.exists():
            assert_next_command_does_not_crash(run, store, f"os._exit at write {n}")
        done = subprocess.run([sys.executable, "-c", CHILD, model, str(data), str(store), "0"], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        same_store(store, reference)
        assert_one_complete_run(store)


def test_a_vector_or_gguf_export_killed_mid_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    import gguf

    from actstore.vectors.info import VectorInfo
    from actstore.vectors.interop import read_gguf_control_vector, write_gguf_control_vector
    from actstore.vectors.vector import SteeringVector, load_vector, save_vector

    old = SteeringVector(np.ones(8, np.float32), np.arange(8), np.ones(8, np.float32), VectorInfo(layer=2))
    new = SteeringVector(np.full(8, 2, np.float32), np.arange(8), np.ones(8, np.float32), VectorInfo(layer=2))
    vector_file, gguf_file = tmp_path / "v.safetensors", tmp_path / "v.gguf"
    save_vector(old, vector_file)
    write_gguf_control_vector(old, gguf_file, "llama")
    before = {path: path.read_bytes() for path in (vector_file, gguf_file)}

    def dies_halfway(filename, payload):
        with open(filename, "wb") as handle:
            handle.write(payload[:64])  # the first bytes reach the disk, then the process dies
        raise Killed("mid-write")

    monkeypatch.setattr(actstore.vectors.vector, "_write_bytes", dies_halfway)
    with pytest.raises(Killed):
        save_vector(new, vector_file)
    original = gguf.GGUFWriter.write_tensors_to_file

    def tensors_die(self, *args, **kwargs):  # the header and keys are written by now
        raise Killed("mid-write")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", tensors_die)
    with pytest.raises(Killed):
        write_gguf_control_vector(new, gguf_file, "llama")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", original)
    for path, content in before.items():
        assert path.read_bytes() == content, path
    np.testing.assert_array_equal(load_vector(vector_file).vector, old.vector)
    np.testing.assert_array_equal(read_gguf_control_vector(gguf_file)[0].vector, old.vector)


def test_a_sweep_killed_while_committing_a_configuration_keeps_the_previous_results(tmp_path, monkeypatch):
    """results.csv is the commit of a configuration: a kill mid-write leaves the old file, and
    the configuration is not counted as done."""
    import actstore.evaluation.files as files_module
    from actstore.evaluation.ledger import Ledger
    from actstore.evaluation.rows import BASELINE, ConfigKey, ItemRows, WindowRows

    def block(key, score, nll):
        return (ItemRows(key, ["a"], np.array([0]), np.array([0]), {"score": np.array([score])}),
                WindowRows(key, np.array([0]), np.array([nll]), np.array([4])))

    columns = ["layer", "method", "k", "alpha", "on_target_shift", "ppl_inflation"]
    ledger = Ledger(tmp_path, {"s": 1}, columns)
    ledger.record_baseline(*block(BASELINE, 0.5, 1.0))
    first = {"layer": 1, "method": "enr", "k": "4", "alpha": 2.0, "on_target_shift": 0.25, "ppl_inflation": 1.0625}
    ledger.record(first, *block(ConfigKey(1, "enr", "4", 2.0), 0.75, 1.5))
    before = (tmp_path / "results.csv").read_bytes()

    def dies(src, dst):
        raise Killed("between writing the new results.csv and renaming it into place")

    monkeypatch.setattr(files_module.os, "replace", dies)
    second = {**first, "alpha": 4.0, "on_target_shift": 0.5}
    with pytest.raises(Killed):
        ledger.record(second, *block(ConfigKey(1, "enr", "4", 4.0), 0.9, 2.0))
    monkeypatch.undo()
    assert (tmp_path / "results.csv").read_bytes() == before
    reopened = Ledger(tmp_path, {"s": 1}, columns)
    assert reopened.is_done(1, "enr", "4", 2.0) and not reopened.is_done(1, "enr", "4", 4.0)
    assert len(reopened.items()) == 2  # the baseline's item and the first configuration's, not the killed one's
