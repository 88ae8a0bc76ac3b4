"""The judge: AxBench's harmonic mean, expected ratings from rating-token probabilities (local model,
OpenAI-compatible endpoint, callable), and the judge's validation (AUROC against scikit-learn's)."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from actstore.errors import ActstoreError, InputFormatError
from actstore.evaluation.judge_validation import auroc_interval
from actstore.evaluation.judges import (
    JUDGE_CAVEAT,
    RUBRICS,
    ZERO_RATING,
    CallableJudge,
    EndpointJudge,
    Judge,
    JudgeValidation,
    LocalJudge,
    Ratings,
    harmonic_mean,
    judge_note,
    make_judge,
    rating_tokens,
    read_labelled,
    rubric_prompt,
    validate_judge,
)

# --- the harmonic mean ----------------------------------------------------------------------------


def test_harmonic_mean_is_zero_where_any_rating_is_zero():
    concept = np.array([0.0, 2.0, 2.0, 1.0, ZERO_RATING / 2, 1.5])
    instruction = np.array([2.0, 0.0, 2.0, 1.0, 2.0, 0.5])
    fluency = np.array([2.0, 2.0, 0.0, 1.0, 2.0, 1.0])
    got = harmonic_mean(concept, instruction, fluency)
    assert got[:3].tolist() == [0.0, 0.0, 0.0]
    assert got[3] == pytest.approx(1.0)
    assert got[4] == 0.0  # below the floor counts as 0
    assert got[5] == pytest.approx(3 / (1 / 1.5 + 1 / 0.5 + 1 / 1.0))


def test_harmonic_mean_keeps_an_unrated_item_unrated():
    got = harmonic_mean([np.nan, 1.0], [1.0, 1.0], [0.0, 2.0])
    assert math.isnan(got[0]) and got[1] == pytest.approx(3 / (1 + 1 + 0.5))


def test_ratings_harmonic_is_the_harmonic_mean_and_ratings_are_checked():
    ratings = Ratings(concept=[1.0, 0.0], instruction=[2.0, 2.0], fluency=[0.5, 1.0])
    assert ratings.concept.dtype == np.float64
    np.testing.assert_allclose(ratings.harmonic, [3 / (1 + 0.5 + 2), 0.0])
    with pytest.raises(ActstoreError, match="fluency ratings must lie in"):
        Ratings(concept=[1.0], instruction=[1.0], fluency=[2.5])
    with pytest.raises(ActstoreError, match="unequal lengths"):
        Ratings(concept=[1.0], instruction=[1.0, 1.0], fluency=[1.0])


def test_rubric_prompts_name_what_they_judge_and_the_scale():
    prompt = rubric_prompt("concept", "Tell me about cats.", "Cats purr.", "feline anatomy")
    assert "feline anatomy" in prompt and "Cats purr." in prompt and "Tell me about cats." not in prompt
    assert "0 = " in prompt and "2 = " in prompt
    assert "Tell me about cats." in rubric_prompt("instruction", "Tell me about cats.", "Cats purr.", "x")
    with pytest.raises(ActstoreError, match="rubric='tone'"):
        rubric_prompt("tone", "a", "b", "c")


# --- the rating tokens ----------------------------------------------------------------------------


class CharTokenizer:
    """One id per character, and, with ``merged``, one id per space-digit (GPT-2's "Ġ1")."""

    def __init__(self, merged: bool, digits: str = "012"):
        self.merged, self.digits = merged, digits

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            if self.merged and text[i] == " " and i + 1 < len(text) and text[i + 1] in self.digits:
                ids.append(1000 + int(text[i + 1]))
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return {"input_ids": ids}


def test_rating_tokens_take_the_space_digit_token_where_the_vocabulary_has_one():
    assert rating_tokens(CharTokenizer(merged=True), "Rate it. Rating:") == ("", (1000, 1001, 1002))


def test_rating_tokens_end_the_prompt_with_the_space_where_it_is_a_token_of_its_own():
    assert rating_tokens(CharTokenizer(merged=False), "Rate it. Rating:") == (" ", (ord("0"), ord("1"), ord("2")))


def test_rating_tokens_refuse_a_tokenizer_that_splits_a_rating():
    class Split(CharTokenizer):
        def __call__(self, text, add_special_tokens=False):
            ids = super().__call__(text)["input_ids"]
            return {"input_ids": [x for c in ids for x in ((c, c) if c == ord("1") else (c,))]}

    with pytest.raises(ActstoreError, match="does not encode the ratings"):
        rating_tokens(Split(merged=False), "Rating:")


# --- the local judge ------------------------------------------------------------------------------

ITEMS = (["Name a colour.", "What is two plus two?", "Describe the sea at night in a long sentence."],
         ["Red.", "Four, which is a number.", "Dark water moves under the moon and the stars."])


def _written_out_rating(loaded, judge, prompt: str, add_special_tokens: bool = True) -> float:
    """The expected rating by hand: softmax over the whole vocabulary of one unpadded forward,
    the probabilities of the three rating tokens, renormalised, sum r * p_r."""
    ids = loaded.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    assert ids[-1] not in judge.token_ids  # the prompt ends where the rating goes
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids])).logits[0, -1].double()
    p = torch.softmax(logits, -1)[list(judge.token_ids)].numpy()
    p = p / p.sum()
    return 0 * p[0] + 1 * p[1] + 2 * p[2]


def test_local_judge_rating_is_the_expectation_over_the_rating_tokens(llama):
    judge = LocalJudge(llama, batch_size=2)
    prompt = judge.prompts("concept", *ITEMS, "the sea")[0]
    for digit, digit_id in zip("012", judge.token_ids, strict=True):  # each id: the digit as encoded right there
        assert llama.tokenizer(prompt + digit)["input_ids"] == llama.tokenizer(prompt)["input_ids"] + [digit_id]
    for rubric in RUBRICS:
        prompts = judge.prompts(rubric, *ITEMS, "the sea")
        want = [_written_out_rating(llama, judge, p) for p in prompts]
        np.testing.assert_allclose(judge.rate_rubric(rubric, *ITEMS, "the sea"), want, rtol=1e-5, atol=1e-6)


def test_local_judge_rates_three_rubrics_deterministically_whatever_the_batch(llama):
    first = LocalJudge(llama, batch_size=1).rate(*ITEMS, "the sea")
    again = LocalJudge(llama, batch_size=3).rate(*ITEMS, "the sea")
    for rubric in RUBRICS:
        values = getattr(first, rubric)
        assert values.shape == (3,) and np.all((values >= 0) & (values <= 2))
        np.testing.assert_allclose(getattr(again, rubric), values, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first.concept, first.fluency)  # each rubric is its own prompt
    assert LocalJudge(llama).rate([], [], "the sea").harmonic.shape == (0,)


# --- the endpoint judge ---------------------------------------------------------------------------

TOP = {"1": math.log(0.5), " 2": math.log(0.3), "0": math.log(0.15), "Hello": math.log(0.05)}
WANT = (0.5 * 1 + 0.3 * 2) / (0.5 + 0.3 + 0.15)  # renormalised over the digits only


def _canned(path: str, body: dict) -> dict:
    if path == "/v1/models":
        return {"data": [{"id": "judge-lm"}]}
    if path == "/v1/completions":
        return {"choices": [{"index": i, "text": "1", "logprobs": {"top_logprobs": [TOP]}}
                            for i in reversed(range(len(body["prompt"])))]}
    top = [{"token": token, "logprob": value} for token, value in TOP.items()]
    return {"choices": [{"index": 0, "logprobs": {"content": [{"token": "1", "top_logprobs": top}]}}]}


@contextmanager
def canned_server(answer=_canned, delay: float = 0.0):
    """An OpenAI-compatible server on loopback answering canned JSON; yields (url, requests seen)."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body):
            time.sleep(delay)
            seen.append((self.path, body))
            data = json.dumps(answer(self.path, body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply({})

        def do_POST(self):
            self._reply(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_endpoint_judge_rating_is_the_expectation_over_the_digit_tokens(api):
    with canned_server() as (url, seen):
        judge = EndpointJudge(url + "/v1", api=api)
        got = judge.rate(["Name a colour.", "Count."], ["Red.", "One two."], "colours")
    assert judge.model == "judge-lm" and judge.name.startswith("axbench:judge-lm@")
    np.testing.assert_allclose(got.concept, [WANT, WANT])
    np.testing.assert_allclose(got.harmonic, [WANT, WANT])
    posted = [body for path, body in seen if path != "/v1/models"]
    assert posted and all(body["max_tokens"] == 1 and body["model"] == "judge-lm" for body in posted)
    if api == "completions":
        assert len(posted) == 3 and all(p.endswith("Rating:") for p in posted[0]["prompt"])
    else:
        assert len(posted) == 6 and posted[0]["logprobs"] is True and posted[0]["top_logprobs"] == 20


def test_endpoint_judge_leaves_an_item_without_digits_unrated():
    def no_digits(path, body):
        answer = _canned(path, body)
        if path == "/v1/chat/completions":
            answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = [{"token": "Hi", "logprob": -0.1}]
        return answer

    with canned_server(no_digits) as (url, _):
        got = EndpointJudge(url).rate(["a"], ["b"], "c")
    assert math.isnan(got.concept[0]) and math.isnan(got.harmonic[0])


def test_endpoint_judge_names_the_url_when_nothing_answers():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ActstoreError, match=rf"judge endpoint 'http://127.0.0.1:{port}/v1/models' failed") as err:
        EndpointJudge(f"http://127.0.0.1:{port}", timeout=2)
    assert err.value.params == ("judge_url",)


def test_endpoint_judge_names_the_url_on_a_timeout():
    with canned_server(delay=1.0) as (url, _):
        with pytest.raises(ActstoreError, match=re.escape(f"judge endpoint '{url}/v1/chat/completions' failed")):
            EndpointJudge(url, model="judge-lm", timeout=0.2).rate(["a"], ["b"], "c")


def test_endpoint_judge_refuses_an_answer_without_logprobs():
    with canned_server(lambda path, body: {"choices": [{"index": 0, "text": "1"}]}) as (url, _):
        with pytest.raises(ActstoreError, match="without top log-probs"):
            EndpointJudge(url, model="m", api="completions").rate(["a"], ["b"], "c")


# --- the callable judge and make_judge ------------------------------------------------------------

def _by_length(rubric: str, instruction: str, response: str, concept: str) -> float:
    return min(2.0, len(response) / 10) if rubric == "concept" else 1.0


def test_make_judge_wraps_a_callable_and_passes_a_judge_through():
    judge = make_judge(_by_length)
    assert isinstance(judge, CallableJudge) and judge.name == "_by_length"
    ratings = judge.rate(["q", "q"], ["12345", "x" * 40], "c")
    np.testing.assert_allclose(ratings.concept, [0.5, 2.0])
    np.testing.assert_allclose(ratings.harmonic, [3 / (2 + 1 + 1), 1.0 * 3 / (0.5 + 1 + 1)])
    assert make_judge(judge) is judge and isinstance(judge, Judge)


def test_make_judge_refuses_unknown_judges_and_two_back_ends():
    with pytest.raises(ActstoreError, match="judge='gpt4'") as err:
        make_judge("gpt4")
    assert err.value.params == ("judge",)
    with pytest.raises(ActstoreError, match="not both"):
        make_judge("axbench", judge_model="m", judge_url="http://127.0.0.1:1")
    with pytest.raises(ActstoreError, match=r"must lie in \[0, 2\]"):
        make_judge(lambda *args: 3.0).rate(["a"], ["b"], "c")


def test_make_judge_loads_a_local_model_as_judge(tiny_model_dirs):
    judge = make_judge("axbench", judge_model=str(tiny_model_dirs["llama"]), batch_size=4)
    assert isinstance(judge, LocalJudge) and judge.batch_size == 4 and judge.name == "axbench:tiny-llama"


# --- the validation -------------------------------------------------------------------------------

def _labelled(n_pos=12, n_neg=10, n_hard=5, seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lengths = np.r_[rng.integers(8, 21, n_pos), rng.integers(0, 14, n_neg), rng.integers(4, 18, n_hard)]
    labels = ["positive"] * n_pos + ["negative"] * n_neg + ["hard negative"] * n_hard
    return pd.DataFrame({"prompt": [f"q{i}" for i in range(len(labels))],
                         "response": ["x" * int(n) for n in lengths], "label": labels})


def test_validation_auroc_is_scikit_learns_and_its_interval_resamples_within_labels():
    rows = _labelled()
    validation = validate_judge(CallableJudge(_by_length), rows, "long answers", n_boot=300, seed=7)
    ratings = np.array([_by_length("concept", "", r, "") for r in rows["response"]])
    labels = rows["label"].to_numpy()
    for interval, negative, seed in ((validation.vs_negative, "negative", 7),
                                     (validation.vs_hard_negative, "hard negative", 8)):
        pos, neg = ratings[labels == "positive"], ratings[labels == negative]
        assert interval.estimate == pytest.approx(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))],
                                                                np.r_[pos, neg]))
        rng = np.random.default_rng(seed)  # the same draws, each resample scored by scikit-learn
        p, n = pos[rng.integers(0, len(pos), (300, len(pos)))], neg[rng.integers(0, len(neg), (300, len(neg)))]
        draws = [roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[a, b]) for a, b in zip(p, n)]
        assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))
    assert validation.counts == {"positive": 12, "negative": 10, "hard negative": 5}
    np.testing.assert_allclose(validation.table()["rating"], ratings)


def test_validation_summary_is_one_line_and_travels_as_json(tmp_path):
    validation = validate_judge(CallableJudge(_by_length), _labelled(), "long answers", n_boot=200)
    line = validation.summary()
    assert re.fullmatch(r"AUROC \d\.\d\d \[\d\.\d\d, \d\.\d\d\] positive vs negative \(n 12/10\); "
                        r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\] vs hard negative \(n 12/5\)", line), line
    assert JudgeValidation.from_json(validation.to_json()) == validation
    json_path = validation.write(tmp_path / "judge.csv")
    assert json_path.name == "judge.csv.json"
    assert JudgeValidation.from_json(json_path.read_text()).summary() == line
    table = pd.read_csv(tmp_path / "judge.csv")
    assert list(table.columns) == ["item", "label", "rating"] and len(table) == 27


def test_validation_without_hard_negatives_says_so_and_counts_unrated_items():
    rows = _labelled(n_hard=0)
    judge = CallableJudge(lambda rubric, i, r, c: math.nan if r == "unrated" else _by_length(rubric, i, r, c))
    rows.loc[12, "response"] = "unrated"
    validation = validate_judge(judge, rows, "long answers", n_boot=50)
    assert "n/a vs hard negative (n 12/0)" in validation.summary()
    assert validation.summary().endswith("; 1 item unrated") and validation.counts["negative"] == 9
    assert math.isnan(auroc_interval([1.0], []).estimate)


def test_validation_refuses_unknown_labels_and_missing_columns():
    rows = _labelled()
    rows.loc[3, "label"] = "maybe"
    with pytest.raises(InputFormatError, match="row 4: label 'maybe'"):
        validate_judge(CallableJudge(_by_length), rows, "c")
    with pytest.raises(InputFormatError, match="missing columns"):
        validate_judge(CallableJudge(_by_length), rows.drop(columns="response"), "c")


def test_judge_note_prints_the_validation_or_says_it_is_missing():
    validation = validate_judge(CallableJudge(_by_length), _labelled(), "long answers", n_boot=50)
    assert validation.summary() in judge_note(validation) and JUDGE_CAVEAT in judge_note(validation)
    missing = judge_note(None, "axbench:tiny")
    assert "axbench:tiny was not validated" in missing and JUDGE_CAVEAT in missing


# --- reading labelled rows ------------------------------------------------------------------------

def write_axbench(folder, concepts=(0, 1)):
    """A small file in AxBench's eval layout and its metadata.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for cid in concepts:
        for category, n in (("positive", 3), ("negative", 3), ("hard negative", 1)):
            rows += [{"input": f"instruction {cid}-{i}", "output": f"{category} response {i}",
                      "output_concept": f"concept {cid}", "category": category, "concept_id": cid}
                     for i in range(n)]
    pd.DataFrame(rows).to_parquet(folder / "latent_eval_data.parquet")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"concept_id": c, "concept": f"the concept {c}"}) + "\n"
                                                   for c in concepts))
    return folder / "latent_eval_data.parquet"


def test_read_labelled_takes_one_axbench_concept_and_its_text(tmp_path):
    path = write_axbench(tmp_path / "ax")
    rows = read_labelled(path, concept_id=1)
    assert list(rows.columns) == ["prompt", "response", "label"] and len(rows) == 7
    assert rows["prompt"].str.startswith("instruction 1-").all() and rows.attrs["concept"] == "the concept 1"
    assert rows["label"].tolist().count("hard negative") == 1
    with pytest.raises(InputFormatError, match=r"holds concepts \[0, 1\]: pass concept_id="):
        read_labelled(path)
    assert read_labelled(write_axbench(tmp_path / "one", (3,))).attrs["concept"] == "the concept 3"


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv"])
def test_read_labelled_reads_prompt_response_label_rows(tmp_path, suffix):
    records = [{"instruction": "a", "response": "b", "label": "pos"},
               {"instruction": "c", "response": "d", "label": "hard_negative"}]
    path = tmp_path / f"rows.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == "json":
        path.write_text(json.dumps(records))
    else:
        pd.DataFrame(records).to_csv(path, index=False)
    rows = read_labelled(path)
    assert rows.to_dict("records") == [{"prompt": "a", "response": "b", "label": "positive"},
                                       {"prompt": "c", "response": "d", "label": "hard negative"}]


def test_read_labelled_names_the_missing_column(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a", "label": "positive"}) + "\n")
    with pytest.raises(InputFormatError, match="no response/output column"):
        read_labelled(path)


# --- the real instruct judge on AxBench (slow) ----------------------------------------------------

@pytest.mark.slow
def test_embedded_instruct_judge_rates_axbench_rows_the_same_in_any_batch(shared_data):
    """The real judge (SmolLM2-135M-Instruct, its chat template, digits split from the space): left
    padding changes nothing, and the first rating is the written-out expectation. (Its AUROC is not
    asserted: a 135M judge is near chance on several concepts; that is what validation is for.)"""
    path = shared_data / "axbench-concept10" / "prod_2b_l10_v1" / "latent_eval_data.parquet"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rows = read_labelled(path, concept_id=0).groupby("label").head(4)
    rows = rows.assign(response=rows["response"].str.slice(0, 200))  # short texts: the test stays under a minute
    judge = make_judge("axbench", batch_size=len(rows))
    assert judge.gap == " " and judge.chat.template
    validation = validate_judge(judge, rows, rows.attrs["concept"], n_boot=200)
    one_by_one = LocalJudge(judge.loaded, batch_size=1).rate_rubric("concept", rows["prompt"], rows["response"],
                                                                     rows.attrs["concept"])
    np.testing.assert_allclose(validation.ratings, one_by_one, atol=1e-4)
    prompt = judge.prompts("concept", rows["prompt"][:1], rows["response"][:1], rows.attrs["concept"])[0]
    assert _written_out_rating(judge.loaded, judge, prompt, add_special_tokens=False) == pytest.approx(
        validation.ratings[0], abs=1e-4)
    assert 0 <= validation.vs_negative.estimate <= 1 and validation.counts["positive"] == 4
