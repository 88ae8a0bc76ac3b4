"""Perplexity text as documents: WikiText split at article headings, JSONL/Parquet records, windows
from many documents, and the default text found from any folder."""

from __future__ import annotations

import json

import pytest

from actstore.inputs.corpus import (
    Document,
    default_corpus,
    document_windows,
    read_documents,
    split_wikitext,
)
from actstore.errors import ActstoreError, InputFormatError

WIKI = (" \n = First Article = \n \n Body one . \n \n = = Section = = \n \n More of one . \n"
        " = 1 / s = \n after an equation line , still one . \n \n"
        " = Second = \n \n Body two . \n \n = = = Deep = = = \n \n Two again . \n")


def test_wikitext_splits_at_article_headings_only():
    docs = split_wikitext(WIKI)
    assert [d.title for d in docs] == ["First Article", "Second"]
    assert [d.index for d in docs] == [0, 1]
    assert docs[0].text.startswith(" = First Article = ") and "More of one" in docs[0].text
    assert "after an equation line" in docs[0].text  # " = 1 / s = " without a blank line after: no heading
    assert docs[1].text.endswith("Two again . \n") and "= = = Deep = = =" in docs[1].text
    assert "".join(d.text for d in docs) == WIKI[2:]  # everything but the blank line before the first heading


def test_text_before_the_first_heading_is_a_document_of_its_own():
    docs = split_wikitext("Preface line .\n = Only = \n \n body \n")
    assert [(d.title, d.text) for d in docs] == [(None, "Preface line .\n"), ("Only", " = Only = \n \n body \n")]


def test_read_documents_of_each_format(tmp_path):
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(WIKI)
    assert len(read_documents(wiki)) == 2
    plain = tmp_path / "plain.txt"
    plain.write_text("just some text\nover two lines\n")
    assert read_documents(plain) == [Document(0, "just some text\nover two lines\n")]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"doc {i}", "title": f"t{i}"}) for i in range(3)) + "\n")
    docs = read_documents(jsonl, text_column="body")
    assert [(d.index, d.text, d.title) for d in docs] == [(0, "doc 0", "t0"), (1, "doc 1", "t1"), (2, "doc 2", "t2")]
    with pytest.raises(InputFormatError, match=r"docs.jsonl' line 1: expected an object with a string field 'text'"):
        read_documents(jsonl)


def test_read_documents_from_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": [f"document number {i}" for i in range(5)]}), path)
    docs = read_documents(path, text_column="content")
    assert len(docs) == 5 and docs[3] == "document number 3"


def _long_documents(n: int, words: int) -> list[Document]:
    return [Document(i, " ".join(f"doc{i} word{j}" for j in range(words)), f"t{i}") for i in range(n)]


def test_windows_come_from_at_least_min_documents_a_few_each(tiny_tokenizer):
    docs = _long_documents(40, 200)
    windows = document_windows(tiny_tokenizer, docs, 64 * 16, window=16, min_documents=32, seed=3)
    assert len(windows) == 64 and all(len(w.token_ids) == 16 for w in windows)
    per_doc = {}
    for w in windows:
        per_doc.setdefault(w.document, []).append(w.start)
    assert len(per_doc) == 32 and {len(v) for v in per_doc.values()} == {2}
    for doc, starts in per_doc.items():  # each window is the document's own tokens, windows distinct
        ids = tiny_tokenizer(docs[doc].text, add_special_tokens=False)["input_ids"]
        assert len(set(starts)) == len(starts)
        for w in (w for w in windows if w.document == doc):
            assert list(w.token_ids) == ids[w.start : w.start + 16] and w.start % 16 == 0
    assert windows == document_windows(tiny_tokenizer, docs, 64 * 16, window=16, min_documents=32, seed=3)
    other = document_windows(tiny_tokenizer, docs, 64 * 16, window=16, min_documents=32, seed=4)
    assert {w.document for w in other} != set(per_doc)


def test_an_uneven_count_spreads_over_more_documents_the_first_giving_one_more(tiny_tokenizer):
    docs = _long_documents(40, 200)
    one_each = document_windows(tiny_tokenizer, docs, 35 * 8, window=8, min_documents=32)
    assert len(one_each) == 35 and len({w.document for w in one_each}) == 35
    windows = document_windows(tiny_tokenizer, docs, 67 * 8, window=8, min_documents=32)
    counts = {}
    for w in windows:
        counts[w.document] = counts.get(w.document, 0) + 1
    assert len(windows) == 67 and sorted(counts.values()) == [2] * 32 + [3]


def test_too_few_windows_or_documents_is_refused_with_the_fix(tiny_tokenizer):
    docs = _long_documents(40, 200)
    with pytest.raises(InputFormatError, match=r"makes 16 windows, fewer than min_documents=32: ask for at least "
                                               r"4096 tokens or windows of at most 64 tokens"):
        document_windows(tiny_tokenizer, docs, 2048, window=128)
    short = _long_documents(10, 200) + [Document(10 + i, "tiny") for i in range(30)]
    with pytest.raises(InputFormatError, match=r"only 10 of 40 documents hold 16\+ tokens; 32 are needed"):
        document_windows(tiny_tokenizer, short, 32 * 16, window=16)


def test_the_default_corpus_is_found_from_any_folder(tmp_path, monkeypatch, shared_data):
    monkeypatch.delenv("ACTSTORE_TEXT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_corpus().resolve() == (shared_data / "wikitext-2" / "test.txt").resolve()
    docs = read_documents(default_corpus())
    assert len(docs) == 60 and docs[0].title == "Robert <unk>"  # WikiText-2's test split: 60 articles
    mine = tmp_path / "mine.txt"
    mine.write_text("hello")
    monkeypatch.setenv("ACTSTORE_TEXT", str(mine))
    assert default_corpus() == mine
    monkeypatch.setenv("ACTSTORE_TEXT", str(tmp_path / "missing.txt"))
    with pytest.raises(ActstoreError, match=r"ACTSTORE_TEXT=.*missing.txt' does not exist.*--text") as err:
        default_corpus()
    assert err.value.params == ("text",)


def test_without_a_text_the_error_names_the_flag(tmp_path, monkeypatch):
    import actstore.inputs.corpus as corpus

    monkeypatch.delenv("ACTSTORE_TEXT", raising=False)
    monkeypatch.setattr(corpus, "_SHARED_TEXT", tmp_path / "nowhere" / "test.txt")
    with pytest.raises(ActstoreError, match="no perplexity text given and none found .* pass --text"):
        default_corpus()
