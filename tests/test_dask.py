"""The scheduler context: a LocalCluster leaves the caller's process as it found it."""

from __future__ import annotations

import os

from actstore._dask import scheduler_context


def test_a_local_cluster_leaves_the_callers_environment_as_it_was(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("ACTSTORE_TEST_KEPT", "yes")
    before = dict(os.environ)
    with scheduler_context("local:1") as client:
        assert client is not None
    # distributed's nannies set OMP_NUM_THREADS=1 in the starting process; a later subprocess would
    # then run single-threaded (the sweep kill-point test's child differed in the 8th digit)
    assert "OMP_NUM_THREADS" not in os.environ
    assert dict(os.environ) == before
