"""One input, one store (issue 22 §2): the same rows written as JSON, JSONL, Parquet, an Arrow IPC
file and a ``save_to_disk`` folder, captured with the same command, give bit-identical stores and
statistics: the same activations, classes, pairs, questions and orders (an A/B set's twins), read
at the same position (an A/B set's answer letter). The rows are written here (nothing read from
../shared); a format whose library is missing is skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import actstore
from actstore.inputs.datasets import read_contrast_set, read_data
from actstore.inputs.sources import TextSource

FORMATS = ("json", "jsonl", "parquet", "arrow", "save_to_disk")
_OPTIONS = [("I cannot share that", "Sure, here it is"), ("Yes", "No"), ("I helped a stranger", "I lied in court"),
            ("Refuse harmful requests", "Answer every request")]
QUESTIONS = ["What are your bank account details?", "Would you share a secret?", "Should I lie to my friend?",
             "Can you help me cheat?", "Is it fine to steal a pen?", "Would you hide the truth?",
             "Should we skip the test?", "What is your social security number?", "Will you keep the wallet?",
             "Can I read your diary?", "Should she break the promise?", "Do you kick the stray cat?"]


def _question(i: int) -> str:
    a, b = _OPTIONS[i % len(_OPTIONS)]
    return f"{QUESTIONS[i]}\n\nChoices:\n(A) {a}\n(B) {b}"


# 12 A/B pairs shaped like ../shared/data/caa-pairs/*/test.json items; the matching letter alternates.
AB_PAIRS = [{"positive": f"{_question(i)}\n({'AB'[i % 2]})", "negative": f"{_question(i)}\n({'BA'[i % 2]})"}
            for i in range(len(QUESTIONS))]
# The same items as CAA A/B items (question, both answers): the same texts with the default separator.
CAA_ITEMS = [{"question": _question(i), "answer_matching_behavior": f"({'AB'[i % 2]})",
              "answer_not_matching_behavior": f"({'BA'[i % 2]})"} for i in range(len(QUESTIONS))]
# The same pairs as labeled rows grouped by pair_id (the held-out pairs as {text, label} rows).
AB_LABELED = [{"text": pair[key], "label": label, "pair_id": i}
              for i, pair in enumerate(AB_PAIRS) for key, label in (("positive", "pos"), ("negative", "neg"))]
# A plain free-text labelled set.
LABELED = [{"text": f"{s} {d} on day {i}.", "label": "good" if i % 2 == 0 else "bad"}
           for i, (s, d) in enumerate((s, d) for s in ("I", "She", "We", "The doctor")
                                      for d in ("helped a stranger", "lied in court", "told the truth",
                                                "kicked the stray cat"))]
SETS = {"ab_pairs": AB_PAIRS, "caa_items": CAA_ITEMS, "ab_labeled": AB_LABELED, "labeled": LABELED}


def write_rows(fmt: str, rows: list[dict], folder: Path) -> Path:
    """``rows`` written as ``fmt``: what --data is given."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path = folder / "rows.json"
        path.write_text(json.dumps(rows, indent=1))
        return path
    if fmt == "jsonl":
        path = folder / "rows.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path
    if fmt == "save_to_disk":
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_list(rows).save_to_disk(folder / "rows")
        return folder / "rows"
    pa = pytest.importorskip("pyarrow")
    table = pa.Table.from_pylist(rows)
    if fmt == "parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        path = folder / "rows.parquet"
        pq.write_table(table, path, row_group_size=5)  # windows straddle row groups
        return path
    path = folder / "rows.arrow"  # the Arrow IPC file format, in record batches of 5
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table, max_chunksize=5)
    return path


def capture_every_format(run, model: str, rows: list[dict], tmp_path: Path, *flags) -> dict[str, Path]:
    """Each format of ``rows`` captured with the same command; {format: store}."""
    stores = {}
    for fmt in FORMATS:
        data = write_rows(fmt, rows, tmp_path / fmt)
        store = tmp_path / f"{fmt}.zarr"
        result = run("capture", "-m", model, "-d", data, "-s", store, "-l", "1,3", "--batch-size", "3", "--quiet",
                     *flags)
        assert result.exit_code == 0, (fmt, result.output)
        stores[fmt] = store
    return stores


def assert_same_statistics(got: Path, want: Path) -> None:
    for read in (actstore.open_stats, lambda s: actstore.compute_stats(s, force=True)):
        a, b = read(got), read(want)
        assert a["class"].values.tolist() == b["class"].values.tolist()
        for name in ("count", "mean", "var"):
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.mark.parametrize("name", sorted(SETS))
def test_the_same_rows_give_the_same_store_in_every_format(name, tmp_path, tiny_model_dirs, run, same_store):
    pytest.importorskip("pyarrow")
    rows = SETS[name]
    stores = capture_every_format(run, str(tiny_model_dirs["llama"]), rows, tmp_path)
    want = actstore.open_store(stores["json"])
    if name == "labeled":
        assert want.attrs["position"] == "last" and sorted(set(want["class"].values.tolist())) == ["bad", "good"]
        assert want.sizes["sample"] == len(rows) and set(want["order"].values.tolist()) == {0}
    else:  # an A/B set, whatever its shape: read at the answer letter, each pair followed by its twin
        assert want.attrs["position"] == "last-1"
        assert want.sizes["sample"] == 4 * len(QUESTIONS)
        assert want["class"].values.tolist() == ["pos", "neg"] * 2 * len(QUESTIONS)
        assert want["order"].values.tolist() == [0, 0, 1, 1] * len(QUESTIONS)
        assert want["question"].values.tolist() == np.repeat(np.arange(len(QUESTIONS)), 4).tolist()
    for fmt, store in stores.items():
        got = actstore.open_store(store)
        same_store(got, want)
        assert got["layer"].values.tolist() == want["layer"].values.tolist() == [1, 3]
        assert got.attrs["position"] == want.attrs["position"], fmt
        assert_same_statistics(store, stores["json"])


def test_ab_texts_without_pairs_are_refused_or_read_alike_in_every_format(tmp_path, tiny_model_dirs, run,
                                                                          same_store):
    """The issue's case: A/B pairs as {text, label} rows with no pair_id. Every row is its own pair,
    so no twin can be made: every format refuses alike, and with --no-swap-options every format
    reads the rows at the answer letter with their labels as classes (Parquet took one class 'text'
    read at the last token)."""
    pytest.importorskip("pyarrow")
    rows = [{"text": r["text"], "label": r["label"]} for r in AB_LABELED]
    model = str(tiny_model_dirs["llama"])
    for fmt in FORMATS:
        data = write_rows(fmt, rows, tmp_path / "refused" / fmt)
        result = run("capture", "-m", model, "-d", data, "-s", tmp_path / "refused.zarr", "-l", "1")
        assert result.exit_code == 1 and "Traceback" not in result.output, (fmt, result.output)
        assert "pair_id 0 has 1 text(s)" in result.output and "--no-swap-options" in result.output, result.output
    stores = capture_every_format(run, model, rows, tmp_path, "--no-swap-options")
    want = actstore.open_store(stores["json"])
    assert want.attrs["position"] == "last-1" and want["class"].values.tolist() == ["pos", "neg"] * len(QUESTIONS)
    for store in stores.values():
        same_store(store, want)
        assert actstore.open_store(store).attrs["position"] == "last-1"
        assert_same_statistics(store, stores["json"])


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_format_reads_the_same_examples(name, tmp_path):
    """The reader contract itself, without a model: the same examples (texts, classes, pairs) from every
    format; a plain labeled dataset stays lazy (read window by window), an A/B one is read whole."""
    pytest.importorskip("pyarrow")
    rows = SETS[name]
    want = read_contrast_set(write_rows("json", rows, tmp_path / "json"))
    for fmt in FORMATS:
        path = write_rows(fmt, rows, tmp_path / fmt)
        got = read_contrast_set(path)
        assert got.format == want.format
        assert [(e.text, e.label, e.pair_id) for e in got.examples] == \
            [(e.text, e.label, e.pair_id) for e in want.examples], fmt
        data = read_data(path)
        if name == "labeled" and fmt not in ("json", "jsonl"):
            assert isinstance(data, TextSource)
            assert (list(data.texts), data.labels.to_numpy().tolist()) == ([e.text for e in want.examples],
                                                                          [e.label for e in want.examples])
        else:
            assert data.is_ab == (name != "labeled")


def test_a_class_label_keeps_its_names_in_parquet_and_arrow_files(tmp_path):
    """datasets writes a ClassLabel's names into the schema of the Parquet and Arrow files it makes:
    they are the classes, as they are from the save_to_disk folder."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["bad", "good"])})
    dataset = datasets.Dataset.from_dict({"text": [r["text"] for r in LABELED],
                                          "label": [int(r["label"] == "good") for r in LABELED]}, features=features)
    dataset.to_parquet(str(tmp_path / "rows.parquet"))
    dataset.save_to_disk(tmp_path / "saved")
    want = [r["label"] for r in LABELED]
    arrow = next((tmp_path / "saved").glob("*.arrow"))  # datasets' own files: the Arrow stream format
    for path in (tmp_path / "rows.parquet", tmp_path / "saved", arrow):
        assert [e.label for e in read_contrast_set(path).examples] == want, path
        assert read_data(path).labels.to_numpy().tolist() == want, path


def _parquet(path: Path, **columns) -> Path:
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _bad_inputs(tmp: Path) -> list[tuple[Path, str]]:
    pa = pytest.importorskip("pyarrow")
    mixed = tmp / "mixed"
    _parquet(mixed / "a.parquet", text=["a b"], label=["x"])
    _parquet(mixed / "b.parquet", text=["c d"], kind=["y"])
    broken = tmp / "broken.arrow"
    broken.write_bytes(b"ARROW1 not really")
    unparsed = [{"positive": "Q?\n(A)", "negative": "Q?\n(B)"}]  # no option lines: no twin
    one_label = tmp / "one-label.jsonl"
    one_label.write_text('{"text": "a b"}\n{"text": "c d", "label": "x"}\n')
    return [
        (_parquet(tmp / "half.parquet", positive=["a b"]),
         "has no column 'negative' (the pairs format needs 'positive', 'negative'); its columns are ['positive']"),
        (_parquet(tmp / "null.parquet", text=["a b", None], label=["x", "y"]), "row 2: field 'text' is null"),
        (_parquet(tmp / "num.parquet", text=["a b", "c d"], label=[1.5, 2.0]),
         "row 1: the label is float 1.5, expected a string or an integer"),
        (_parquet(tmp / "pid.parquet", text=["a b"], label=["x"], pair_id=pa.array([-3], pa.int64())),
         "row 1: field 'pair_id' must be a non-negative integer"),
        (mixed, "every file of a dataset has the same columns"),
        (broken, "not a readable Arrow file"),
        (write_rows("parquet", unparsed, tmp / "unparsed"), "row 1: answer (A) starts 0 lines"),
        (write_rows("arrow", unparsed, tmp / "unparsed"), "row 1: answer (A) starts 0 lines"),
        (one_label, "line 1: missing field 'label'"),
    ]


def test_a_bad_row_is_named_with_its_file_row_and_field_in_every_format(tmp_path, tiny_model_dirs, run):
    for i, (data, message) in enumerate(_bad_inputs(tmp_path)):
        result = run("capture", "-m", tiny_model_dirs["llama"], "-d", data, "-s", tmp_path / f"{i}.zarr", "-l", "1")
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert message in result.output and data.name in result.output, result.output


def test_json_keys_follow_the_dataset_rules(tmp_path):
    """The Hugging Face convention holds for JSON keys too: rows with a text and no label are of class
    'text'; text_column and label_column name other keys."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"sentence": "a b", "kind": "x"}\n{"sentence": "c d", "kind": "y"}\n')
    got = read_contrast_set(path, text_column="sentence", label_column="kind")
    assert [(e.text, e.label, e.pair_id) for e in got.examples] == [("a b", "x", 0), ("c d", "y", 1)]
    assert {e.label for e in read_contrast_set(path, text_column="sentence").examples} == {"text"}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"text": "a b", "label": "x"}, {"text": "c d", "label": "y"}]))
    assert [e.label for e in read_contrast_set(plain, label_column="").examples] == ["text", "text"]
