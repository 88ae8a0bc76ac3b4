"""capture_to_store's text formatting, and statistics on a dask.distributed scheduler."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import actstore
from actstore.inputs.datasets import Example
from actstore.errors import ActstoreError
from actstore.capture import format_texts

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
)


def test_chat_template_puts_question_and_answer_in_their_turns(tiny_tokenizer):
    examples = [Example("Q?\n(A)", "pos", 0, "item 1", prompt="Q?", completion="(A)"),
                Example("plain text", "neg", 0, "item 1")]
    texts, add_special = format_texts(examples, tiny_tokenizer, chat_template=False)
    assert texts == ["Q?\n(A)", "plain text"] and add_special
    tok = copy.deepcopy(tiny_tokenizer)  # the fixture is shared
    tok.chat_template = TEMPLATE
    texts, add_special = format_texts(examples, tok, chat_template=True)
    assert texts == ["<|user|>Q?<|end|><|assistant|>(A)<|end|>", "<|user|>plain text<|end|>"]
    assert not add_special


def test_chat_template_without_one_is_refused(tiny_tokenizer):
    with pytest.raises(ActstoreError, match="has no chat template"):
        format_texts([Example("t", "pos", 0, "item 1")], tiny_tokenizer, chat_template=True)


def test_stats_on_a_distributed_scheduler_equal_the_threaded_ones(tmp_path, tiny_model_dirs, pairs_file):
    distributed = pytest.importorskip("distributed")
    store = tmp_path / "a.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["llama"]), pairs_file, store, layers="1,3", progress=False)
    threaded = actstore.compute_stats(store, force=True)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        on_cluster = actstore.compute_stats(store, scheduler=cluster.scheduler_address, force=True)
    for name in ("count", "mean", "var"):
        np.testing.assert_allclose(on_cluster[name].values, threaded[name].values, rtol=1e-12)


def test_stats_on_a_local_cluster_started_for_the_run_equal_the_threaded_ones(tmp_path, tiny_model_dirs,
                                                                              pairs_file):
    pytest.importorskip("distributed")
    store = tmp_path / "a.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["gpt2"]), pairs_file, store, layers="0,1", progress=False)
    threaded = actstore.compute_stats(store, force=True)
    on_cluster = actstore.compute_stats(store, scheduler="local:2", force=True)
    for name in ("count", "mean", "var"):
        np.testing.assert_allclose(on_cluster[name].values, threaded[name].values, rtol=1e-12)


@pytest.mark.parametrize("bad", ["local:0", "local:two", "local:"])
def test_a_bad_local_cluster_size_is_refused(tmp_path, bad):
    pytest.importorskip("distributed")
    from actstore.errors import StatsError
    from actstore.stats.streaming import scheduler_context

    with pytest.raises(StatsError, match="expected local:N with N >= 1"), scheduler_context(bad):
        pass
