"""Dataset inputs read window by window: Parquet, Arrow (save_to_disk), plain-text corpora."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import actstore
from actstore.cli.main import cli
from actstore.errors import InputFormatError
from actstore.inputs.sources import Column, open_source

TEXTS = [f"{s} {d} on day {i}." for i, (s, d) in enumerate(
    (s, d) for s in ("I", "She", "We", "They", "The doctor") for d in ("helped a stranger", "lied in court",
                                                                       "told the truth", "kicked the stray cat"))]
LABELS = ["good" if i % 2 == 0 else "bad" for i in range(len(TEXTS))]


def reference(tmp_path, model):
    """The same texts as a labeled JSONL contrast set, captured the usual way."""
    data = tmp_path / "labeled.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in zip(TEXTS, LABELS)))
    store = tmp_path / "ref.zarr"
    actstore.capture_to_store(model, data, store, layers="1,3", position="all", window=3, batch_size=2, progress=False)
    return actstore.open_store(store)


def test_a_parquet_dataset_in_several_row_groups_equals_the_same_texts_as_jsonl(same_store, tmp_path,
                                                                                tiny_model_dirs):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    folder = tmp_path / "parquet"
    folder.mkdir()
    # Two files, row groups of 3 rows: windows of 3 texts straddle files and groups differently.
    for part, (a, b) in enumerate(((0, 11), (11, len(TEXTS)))):
        table = pa.table({"sentence": TEXTS[a:b], "kind": LABELS[a:b], "other": list(range(a, b))})
        pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=3)
    store = tmp_path / "pq.zarr"
    report = actstore.capture_to_store(model, folder, store, layers="1,3", position="all", window=3, batch_size=2,
                                       text_column="sentence", label_column="kind", progress=False)
    assert report.n_texts == len(TEXTS)
    same_store(actstore.open_store(store), reference(tmp_path, model))


def test_an_arrow_dataset_saved_to_disk_uses_its_class_names(same_store, tmp_path, tiny_model_dirs):
    datasets = pytest.importorskip("datasets")
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["bad", "good"])})
    dataset = datasets.Dataset.from_dict({"text": TEXTS, "label": [1 if lab == "good" else 0 for lab in LABELS]},
                                         features=features)
    dataset.save_to_disk(tmp_path / "arrow")
    store = tmp_path / "arrow.zarr"
    actstore.capture_to_store(model, tmp_path / "arrow", store, layers="1,3", position="all", window=3, batch_size=2,
                              label_column="label", progress=False)
    same_store(actstore.open_store(store), reference(tmp_path, model))


def test_a_corpus_is_cut_into_windows_of_max_length_tokens_and_resumes(same_store, tmp_path, tiny_model_dirs,
                                                                        monkeypatch, interrupt_after):
    model = actstore.load_model(str(tiny_model_dirs["gpt2"]))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS * 6) + "\n")
    source = open_source(corpus, tokenizer=model.tokenizer, max_length=16)
    lengths = [len(model.tokenizer(t)["input_ids"]) for t in source.texts]
    assert len(source) > 10 and max(lengths) <= 17 and sum(lengths) > 15 * len(source) * 0.8
    # Every token of the corpus is in exactly one window, in order.
    assert "".join(source.texts).replace(" ", "").replace("\n", "") == corpus.read_text().replace(" ", "").replace(
        "\n", "")
    whole = tmp_path / "whole.zarr"
    actstore.capture_to_store(model, corpus, whole, layers="1", position="all", max_length=16, window=4, progress=False)
    want = actstore.open_store(whole)
    assert set(want["class"].values.tolist()) == {"text"}

    from actstore.stores import ActivationWriter

    real = interrupt_after(ActivationWriter, "append", 3)
    store = tmp_path / "resumed.zarr"
    with pytest.raises(KeyboardInterrupt):
        actstore.capture_to_store(model, corpus, store, layers="1", position="all", max_length=16, window=4, progress=False)
    monkeypatch.setattr(ActivationWriter, "append", real)
    report = actstore.capture_to_store(model, corpus, store, layers="1", position="all", max_length=16, window=4,
                                       resume=True, progress=False)
    assert report.skipped == 8
    same_store(actstore.open_store(store), want)


def test_a_column_reads_its_source_once_per_window():
    calls = []

    def fetch(start, stop):
        calls.append((start, stop))
        return list(range(start, stop))

    column = Column(1000, fetch)
    window = column[100:164]
    assert list(window) == list(range(100, 164)) and window[5] == 105 and window[-1] == 163
    assert calls == [(100, 164)]
    with pytest.raises(IndexError):
        window[64]


def test_dataset_mistakes_are_errors_not_tracebacks(tmp_path, tiny_model_dirs, pairs_file):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    data = tmp_path / "d.parquet"
    pq.write_table(pa.table({"sentence": TEXTS}), data)
    model = str(tiny_model_dirs["llama"])
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    cases = [
        (["-d", str(data)], "unrecognised row with columns ['sentence']: no column 'text' (--text-column)"),
        (["-d", str(data), "--text-column", "sentence", "--label-column", "kind"], "has no column 'kind'"),
        (["-d", str(pairs_file), "--text-column", "x"], "has no field 'x' (--text-column); its fields are"),
        (["-d", str(broken)], "not a readable Parquet file"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["capture", "-m", model, "-l", "1", "-s", str(tmp_path / "s.zarr"), *args])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and message in result.output, result.output
    with pytest.raises(InputFormatError, match="holds no text"):
        empty = tmp_path / "empty.txt"
        empty.write_text("\n\n  \n")
        open_source(empty, tokenizer=actstore.load_model(model).tokenizer)


# --- Labels and texts are checked as a contrast-set file's are (issue 22) ---------------------------

def _parquet_file(tmp_path, **columns):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def _labels(path, **kwargs):
    from actstore.inputs.sources import open_source

    return open_source(path, **kwargs).labels.to_numpy().tolist()


def test_a_column_named_label_is_the_class_unless_told_otherwise(tmp_path):
    path = _parquet_file(tmp_path, text=["a b", "c d"], label=["pos", "neg"])
    assert _labels(path) == ["pos", "neg"]
    assert _labels(path, label_column="") == ["text", "text"]


@pytest.mark.parametrize("labels, message", [
    (["pos", None], "row 2: the label is missing (None)"),
    ([1.0, float("nan")], "row 2: the label is missing (nan)"),
    (["pos", "pos\x00"], "row 2: field 'label' 'pos\\x00' holds invisible characters"),
    (["pos", ""], "row 2: the label is empty"),
])
def test_a_missing_or_look_alike_label_is_refused_with_its_row(tmp_path, labels, message):
    from actstore.errors import InputFormatError

    path = _parquet_file(tmp_path, text=["a b", "c d"], label=labels)
    with pytest.raises(InputFormatError) as err:
        _labels(path)
    assert message in str(err.value) and "rows.parquet" in str(err.value)


def test_a_class_label_of_minus_one_is_a_missing_label_not_the_last_class(tmp_path):
    datasets = pytest.importorskip("datasets")
    from actstore.errors import InputFormatError

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["bad", "good"])})
    datasets.Dataset.from_dict({"text": ["a b", "c d"], "label": [1, -1]}, features=features) \
        .save_to_disk(tmp_path / "arrow")
    with pytest.raises(InputFormatError, match=r"row 2: the label is -1.*-1 means a missing label"):
        _labels(tmp_path / "arrow")


def test_an_empty_text_or_a_file_without_rows_is_refused(tmp_path):
    from actstore.errors import InputFormatError
    from actstore.inputs.sources import open_source

    with pytest.raises(InputFormatError, match="row 2: field 'text' is empty"):
        list(open_source(_parquet_file(tmp_path, text=["a b", "  "])).texts)
    pa = pytest.importorskip("pyarrow")
    with pytest.raises(InputFormatError, match="holds no rows"):
        open_source(_parquet_file(tmp_path, text=pa.array([], pa.string())))
