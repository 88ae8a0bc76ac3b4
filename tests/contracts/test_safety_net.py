"""The CLI's safety net: whatever fails, the user reads one ``Error:`` line, never a traceback
(unless ``--debug``), and an unexpected failure leaves its traceback in a file to report."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
from zarr.storage import LocalStore

import actstore


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"positive": f"I kept promise {i}.", "negative": f"I broke promise {i}."}
                                for i in range(6)]))
    return path


def test_an_unexpected_error_is_one_line_with_the_path_of_its_saved_traceback(run, tmp_path, data, tiny_model_dirs,
                                                                              monkeypatch):
    store = tmp_path / "acts.zarr"
    assert run("capture", "-m", tiny_model_dirs["llama"], "-d", data, "-l", "1", "-s", store, "-q").exit_code == 0

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr("actstore.stats.streaming.compute_stats", broken)
    cache = tmp_path / "cache"
    result = run("stats", "-s", store, env={"ACTSTORE_CACHE": str(cache)})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: unexpected ZeroDivisionError: a bug deep inside")
    assert "--debug" in result.output
    saved = Path(re.search(r"saved in (\S+\.txt)", result.output).group(1))
    assert saved.parent == cache / "crashes"
    assert "Traceback" in saved.read_text() and "a bug deep inside" in saved.read_text()
    debug = run("--debug", "stats", "-s", store)
    assert isinstance(debug.exception, ZeroDivisionError)  # --debug lets it through, traceback and all


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"),
                                           (errno.EACCES, "permission denied"), (errno.EFBIG, "size"),
                                           (errno.EIO, "input/output error")])
def test_an_oserror_at_any_write_of_a_capture_is_an_error_line_and_resume_finishes(run, tmp_path, data, tiny_model_dirs,
                                                                                  monkeypatch, code, message):
    """The error is injected at every write site in turn (write 1, 2, ... of the capture)."""
    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))  # the saved tracebacks go there
    original = LocalStore.set
    count = {"n": 0, "fail_at": 0}

    async def failing_set(self, key, value):
        count["n"] += 1
        if count["n"] == count["fail_at"]:
            raise OSError(code, "injected", f"{self.root}/{key}")
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", failing_set)
    args = ["capture", "-m", tiny_model_dirs["llama"], "-d", data, "-l", "1", "-q"]
    run(*args, "-s", tmp_path / "count.zarr")
    total = count["n"]
    step = 1 if code == errno.ENOSPC else 7  # every site for one errno, a spread of sites for the others
    tried = 0
    for fail_at in range(1, total + 1, step):
        store = tmp_path / f"fail{fail_at}.zarr"
        count.update(n=0, fail_at=fail_at)
        result = run(*args, "-s", store)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (fail_at, result.output)
        assert "Traceback" not in result.output
        assert result.output.startswith("Error: ") and message in result.output, (fail_at, result.output)
        assert "saved in " + str(tmp_path / "cache" / "crashes") in result.output
        count.update(n=0, fail_at=0)
        resumed = run(*args, "-s", store, "--resume")
        assert resumed.exit_code == 0, (fail_at, resumed.output)
        assert actstore.open_store(store).sizes["sample"] == 12
        tried += 1
    assert tried >= total // step


def test_device_mistakes_are_error_lines(run, tmp_path, data, tiny_model_dirs, monkeypatch):
    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))
    for device, message in (("cudda", "check --device"), ("cuda:7", "check --device")):
        result = run("capture", "-m", tiny_model_dirs["llama"], "-d", data, "-l", "1", "-s", tmp_path / "d.zarr",
                     "--device", device)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.output.startswith("Error:") and message in result.output, result.output


def test_a_reader_that_goes_away_is_no_error_and_the_vector_is_written(run, tmp_path, data, tiny_model_dirs):
    import os
    import subprocess
    import sys

    store = tmp_path / "s.zarr"
    assert run("capture", "-m", tiny_model_dirs["llama"], "-d", data, "-l", "1", "-s", store, "-q").exit_code == 0
    out = tmp_path / "v.safetensors"
    env = {**os.environ, "PYTHONPATH": str(Path(actstore.__file__).parents[1])}
    # `actstore enr ... | head -0`: the pipe's reader has gone before the first line is printed
    proc = subprocess.Popen([sys.executable, "-m", "actstore.cli.main", "enr", "-s", str(store), "--layer", "1",
                             "--k", "8", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.wait()
    assert "Broken pipe" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert actstore.load_vector(out).k == 8
