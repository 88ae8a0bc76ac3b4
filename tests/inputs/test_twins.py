"""Option-swapped twins: the one A/B detector, the swap, and sets captured with their twins."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actstore.inputs.datasets import (
    ABQuestion,
    ab_question,
    answer_letter,
    read_contrast_set,
    swap_options,
    with_twins,
)
from actstore.errors import DatasetError, InputFormatError

LETTERS = "ABCDEFGH"


def test_the_detector_reads_upper_case_letters_only():
    assert answer_letter("Q?\n(A) yes\n(B) no\n(B)") == "B"
    assert answer_letter("Q?\n (C)  \n") == "C"  # trailing whitespace is kept as the tail
    assert answer_letter("a list ends (a)") is None
    assert answer_letter("Q?\n(A) yes") is None  # an option line is not an answer
    assert answer_letter("Q (AB)") is None


def test_ab_question_rebuilds_both_texts_exactly():
    q = ab_question("Q?\n\nChoices:\n (A) Yes\n (B) No\n (B)", "Q?\n\nChoices:\n (A) Yes\n (B) No\n (A)",
                    where="item 1")
    assert q == ABQuestion("Q?\n\nChoices:\n (A) Yes\n (B) No\n ", "B", "A")
    assert q.positive.endswith("(B)") and q.negative.endswith("(A)")
    tailed = ab_question("Q\n(A) x\n(B) y\n(A) \n", "Q\n(A) x\n(B) y\n(B) \n", where="item 2")
    assert tailed.tail == " \n" and tailed.positive == "Q\n(A) x\n(B) y\n(A) \n"


@pytest.mark.parametrize("positive, negative, message", [
    ("Q?\n(A) x\n(B) y\nA", "Q?\n(A) x\n(B) y\n(B)", "item 7: the positive text does not end with an answer"),
    ("Q?\n(A) x\n(B) y\n(A)", "Q?\n(A) x\n(B) y\n(A)", "item 7: both texts answer (A)"),
    ("Q?\n(A) x\n(B) y\n(A)", "R?\n(A) x\n(B) y\n(B)", "item 7: the positive and negative texts ask different"),
])
def test_ab_question_refuses_pairs_that_are_not_one_question(positive, negative, message):
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        ab_question(positive, negative, where="item 7")
    assert isinstance(err.value, InputFormatError)


def test_a_two_option_twin_shows_the_matching_answer_under_the_other_letter():
    q = ab_question("Q?\n\nChoices:\n(A) I refuse\n(B) Sure, here it is\n(A)",
                    "Q?\n\nChoices:\n(A) I refuse\n(B) Sure, here it is\n(B)", where="item 1")
    twin = swap_options(q, where="item 1")
    assert twin.positive == "Q?\n\nChoices:\n(A) Sure, here it is\n(B) I refuse\n(B)"
    assert twin.negative == "Q?\n\nChoices:\n(A) Sure, here it is\n(B) I refuse\n(A)"
    assert (twin.matching, twin.other) == ("B", "A")


def test_more_than_two_options_swap_only_the_two_answers():
    question = ("Question: which?\n\nChoices:\n (A) None of the options\n\n (B) Only option 3\n\n"
                " (C) Options 1-2\n\nAnswer:\n ")
    q = ABQuestion(question, "C", "A")
    twin = swap_options(q, where="item 45")
    assert twin.question == ("Question: which?\n\nChoices:\n (A) Options 1-2\n\n (B) Only option 3\n\n"
                             " (C) None of the options\n\nAnswer:\n ")
    assert twin.options(where="x") == {"A": " Options 1-2", "B": " Only option 3", "C": " None of the options"}
    assert swap_options(twin, where="x") == q


def test_options_over_several_lines_move_whole():
    question = "Q?\n\nChoices:\n (A) Steps:\n1. one\n2. two\n (B) That is false.\n"
    twin = swap_options(ABQuestion(question, "A", "B"), where="x")
    assert twin.question == "Q?\n\nChoices:\n (A) That is false.\n (B) Steps:\n1. one\n2. two\n"
    assert swap_options(twin, where="x").question == question


@pytest.mark.parametrize("question, message", [
    ("Q? yes or no\n", r"answer \(A\) starts 0 lines, not one \(option lines found: none\)"),
    ("Q?\n(A) yes\n(A) also yes\n(B) no\n", r"answer \(A\) starts 2 lines"),
    ("Q?\n(A) yes\n(B) no\n(C) maybe\n(C) again\n", r"option letter\(s\) \(C\) start several lines"),
])
def test_options_that_cannot_be_parsed_are_refused_naming_the_item(question, message):
    with pytest.raises(DatasetError, match="'data.json' item 3: " + message) as err:
        swap_options(ABQuestion(question, "A", "B"), where="'data.json' item 3")
    assert "swap_options=False (--no-swap-options)" in str(err.value)


@st.composite
def questions(draw):
    """An A/B question with 2-6 options (some over several lines, some blank lines between)
    and the two answer letters."""
    n = draw(st.integers(2, 6))
    line = st.text(alphabet="abcxyz ,.?!0123456789", min_size=1, max_size=12).filter(lambda t: t.strip())
    parts = [draw(line) + "\n\nChoices:\n"]
    indent = draw(st.sampled_from(["", " ", "\t"]))
    for letter in LETTERS[:n]:
        body = " ".join(draw(st.lists(line, min_size=1, max_size=3))).strip()
        more = draw(st.lists(line.map(lambda t: "- " + t.strip()), max_size=2))  # continuation lines
        parts.append(f"{indent}({letter}) {body}" + "".join("\n" + m for m in more) + "\n"
                     + draw(st.sampled_from(["", "\n"])))
    parts.append(draw(st.sampled_from(["", " ", "\nAnswer:\n ", "\n\nAnswer:\n "])))
    matching, other = draw(st.lists(st.sampled_from(LETTERS[:n]), min_size=2, max_size=2, unique=True))
    return ABQuestion("".join(parts), matching, other)


@settings(max_examples=300, deadline=None)
@given(questions())
def test_swap_exchanges_the_two_answers_and_nothing_else(q):
    twin = swap_options(q, where="x")
    assert swap_options(twin, where="x") == q
    assert (twin.matching, twin.other) == (q.other, q.matching)
    before, after = q.options(where="x"), twin.options(where="x")
    assert after[q.matching] == before[q.other] and after[q.other] == before[q.matching]
    assert {k: v for k, v in after.items() if k not in (q.matching, q.other)} == \
           {k: v for k, v in before.items() if k not in (q.matching, q.other)}
    # The behavior-matching answer text is the same; only its letter moved.
    assert after[twin.matching] == before[q.matching]


def test_every_shared_ab_item_parses_and_swaps(shared_data):
    counted = 0
    for path in sorted(p for split in ("train", "test") for p in (shared_data / "caa-pairs").glob(f"*/{split}.json")):
        # (open_ended.json beside them holds questions alone, no answers)
        for i, item in enumerate(json.loads(path.read_text())):
            where = f"{path.name} item {i + 1}"
            q = ab_question(item["positive"], item["negative"], where=where)
            assert (q.positive, q.negative) == (item["positive"], item["negative"])
            twin = swap_options(q, where=where)
            assert swap_options(twin, where=where) == q, where
            assert twin.options(where=where)[twin.matching] == q.options(where=where)[q.matching], where
            counted += 1
    assert counted == 270 + 70 + 5228 + 1258 + 375 + 83 + 765 + 188 + 16153 + 4031


def test_with_twins_follows_each_pair_with_its_twin(tmp_path):
    pairs = [{"positive": "Q1?\n(A) good\n(B) bad\n(A)", "negative": "Q1?\n(A) good\n(B) bad\n(B)"},
             {"positive": "Q2?\n(A) bad\n(B) good\n(B)", "negative": "Q2?\n(A) bad\n(B) good\n(A)"}]
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(pairs))
    twins = with_twins(read_contrast_set(path))
    assert twins.swapped and with_twins(twins) is twins
    rows = [(e.label, e.pair_id, e.question, e.order) for e in twins.examples]
    assert rows == [("pos", 0, 0, 0), ("neg", 0, 0, 0), ("pos", 2, 0, 1), ("neg", 2, 0, 1),
                    ("pos", 1, 1, 0), ("neg", 1, 1, 0), ("pos", 3, 1, 1), ("neg", 3, 1, 1)]
    assert [e.text for e in twins.examples[:2]] == [pairs[0]["positive"], pairs[0]["negative"]]
    assert twins.examples[6].text == "Q2?\n(A) good\n(B) bad\n(A)"
    assert twins.examples[2].text == "Q1?\n(A) bad\n(B) good\n(B)"


def test_a_caa_items_twin_swaps_its_prompt_and_completion(tmp_path):
    item = {"question": "Q?\n\nChoices:\n (A) Yes\n (B) No", "answer_matching_behavior": " (B)",
            "answer_not_matching_behavior": " (A)"}
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(item) + "\n")
    twins = with_twins(read_contrast_set(path, separator="\n"))
    twin_pos = twins.examples[2]
    assert twin_pos.prompt == "Q?\n\nChoices:\n (A) No\n (B) Yes" and twin_pos.completion == " (A)"
    assert twin_pos.text == twin_pos.prompt + "\n" + twin_pos.completion
    assert (twin_pos.label, twin_pos.order, twin_pos.question) == ("pos", 1, 0)


def test_with_twins_refuses_a_set_whose_options_cannot_be_parsed(tmp_path):
    path = tmp_path / "noopts.json"
    path.write_text(json.dumps([{"positive": "Q1?\n(A) a\n(B) b\n(A)", "negative": "Q1?\n(A) a\n(B) b\n(B)"},
                                {"positive": "Yes or no?\n(A)", "negative": "Yes or no?\n(B)"}]))
    with pytest.raises(DatasetError, match=r"noopts.json' item 2: answer \(A\) starts 0 lines"):
        with_twins(read_contrast_set(path))


# --- capture -------------------------------------------------------------------------------------

GOOD = ["No, I would not", "I cannot do that", "That would be wrong", "Please do not"]
BAD = ["Sure, here it is", "Yes, of course", "Go ahead", "Why not"]
ASKS = ["Would you share a secret?", "Should I lie to my friend?", "Can you help me cheat?",
        "Is it fine to steal a pen?", "Would you hide the truth?", "Should we skip the test?",
        "Will you tell me the code?", "Should I copy the homework?"]


@pytest.fixture
def a_heavy_pairs(tmp_path):
    """A/B pairs whose behavior-matching answer is always (A): a vector can learn the letter."""
    pairs = []
    for i, ask in enumerate(ASKS):
        choices = f"{ask}\n\nChoices:\n(A) {GOOD[i % 4]}\n(B) {BAD[i % 4]}\n"
        pairs.append({"positive": choices + "(A)", "negative": choices + "(B)"})
    path = tmp_path / "a_heavy.json"
    path.write_text(json.dumps(pairs))
    return path


def _mean_difference(store) -> np.ndarray:
    import actstore

    ds = actstore.open_store(store)
    acts, classes = ds.acts.values[:, 0].astype(np.float64), ds["class"].values
    return acts[classes == "pos"].mean(0) - acts[classes == "neg"].mean(0)


def test_twins_remove_the_letter_from_a_vector_where_the_letter_dominates(tmp_path, tiny_model_dirs, a_heavy_pairs):
    import torch

    import actstore

    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    letters = [model.tokenizer.convert_tokens_to_ids(x) for x in ("A", "B")]
    with torch.no_grad():  # the letter tokens dominate the residual stream
        model.model.get_input_embeddings().weight[letters] *= 30.0
    embedded = model.model.get_input_embeddings().weight[letters].detach().double().numpy()
    letter = (embedded[0] - embedded[1]) / np.linalg.norm(embedded[0] - embedded[1])

    actstore.capture_to_store(model, a_heavy_pairs, tmp_path / "plain.zarr", layers="1", swap_options=False, progress=False)
    report = actstore.capture_to_store(model, a_heavy_pairs, tmp_path / "twins.zarr", layers="1", progress=False)
    assert report.twins and report.position == "last-1"
    plain, twins = _mean_difference(tmp_path / "plain.zarr"), _mean_difference(tmp_path / "twins.zarr")
    # As written, the vector is the letter: (A) - (B) at the answer.
    assert plain @ letter > 0.99 * np.linalg.norm(plain) and plain @ letter > 1.0
    # With twins each question shows its matching answer once under each letter: the letter cancels.
    assert abs(twins @ letter) < 1e-5 * (plain @ letter)
    # And the twins give the letter's own direction, behavior held fixed: here the plain vector's.
    from actstore.vectors.controls import letter_control

    control = letter_control(tmp_path / "twins.zarr", 1, a_heavy_pairs).vector.astype(np.float64)
    assert control @ plain > 0.99 * np.linalg.norm(control) * np.linalg.norm(plain)


def test_a_twin_capture_records_question_and_order(tmp_path, tiny_model_dirs, a_heavy_pairs):
    import actstore

    model = actstore.load_model(str(tiny_model_dirs["gpt2"]))
    actstore.capture_to_store(model, a_heavy_pairs, tmp_path / "t.zarr", layers="1", progress=False)
    ds = actstore.open_store(tmp_path / "t.zarr")
    n = len(ASKS)
    assert ds.sizes["sample"] == 4 * n
    assert ds["question"].values.tolist() == [q for q in range(n) for _ in range(4)]
    assert ds["order"].values.tolist() == [0, 0, 1, 1] * n
    assert ds["pair_id"].values.tolist() == [x for q in range(n) for x in (q, q, n + q, n + q)]
    assert ds["class"].values.tolist() == ["pos", "neg"] * (2 * n)
    # A second run's questions and pair ids follow the first's, and as written: question = pair id, order 0
    # (the same file under another setting: a run of its own only when asked for, new_run).
    actstore.capture_to_store(model, a_heavy_pairs, tmp_path / "t.zarr", layers="1", swap_options=False, new_run=True,
                              progress=False)
    ds = actstore.open_store(tmp_path / "t.zarr")
    second = slice(4 * n, None)
    assert ds["order"].values[second].tolist() == [0] * (2 * n)
    assert ds["question"].values[second].tolist() == ds["pair_id"].values[second].tolist()
    assert ds["pair_id"].values[second].min() == 2 * n
    runs = actstore.store_info(tmp_path / "t.zarr")["models"][0]["runs"]
    assert [r["swap_options"] for r in runs] == [True, False]


def test_info_and_capture_say_the_set_was_swapped(tmp_path, tiny_model_dirs, a_heavy_pairs):
    from click.testing import CliRunner

    from actstore.cli.main import cli

    runner = CliRunner()
    base = ["capture", "-m", str(tiny_model_dirs["gpt2"]), "-d", str(a_heavy_pairs), "-l", "1", "-q"]
    result = runner.invoke(cli, [*base, "-s", str(tmp_path / "t.zarr")])
    assert result.exit_code == 0, result.output
    assert "each pair captured with its option-swapped twin" in result.output
    assert f"captured {4 * len(ASKS)} texts" in result.output
    info = runner.invoke(cli, ["info", str(tmp_path / "t.zarr")])
    assert f"{4 * len(ASKS)}/{4 * len(ASKS)} texts, each pair with its option-swapped twin, complete" in info.output
    result = runner.invoke(cli, [*base, "-s", str(tmp_path / "p.zarr"), "--no-swap-options"])
    assert result.exit_code == 0 and "twin" not in result.output
    info = runner.invoke(cli, ["info", str(tmp_path / "p.zarr")])
    assert f"{2 * len(ASKS)}/{2 * len(ASKS)} texts, complete" in info.output


def test_a_set_whose_options_cannot_be_parsed_is_refused_before_the_model_loads(tmp_path, tiny_model_dirs):
    from click.testing import CliRunner

    import actstore
    from actstore.cli.main import cli

    path = tmp_path / "noopts.json"
    path.write_text(json.dumps([{"positive": "Yes or no?\n(A)", "negative": "Yes or no?\n(B)"}]))
    with pytest.raises(DatasetError, match=r"noopts.json' item 1: answer \(A\) starts 0 lines"):
        actstore.capture_to_store(str(tmp_path / "no-such-model"), path, tmp_path / "s.zarr", layers="1", progress=False)
    result = CliRunner().invoke(cli, ["capture", "-m", str(tiny_model_dirs["gpt2"]), "-d", str(path), "-l", "1",
                                      "-s", str(tmp_path / "s.zarr"), "-q"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "noopts.json' item 1: answer (A) starts 0 lines" in result.output
    assert "--no-swap-options" in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_a_group_made_before_twins_takes_plain_rows_and_refuses_twins(tmp_path, tiny_model_dirs, a_heavy_pairs):
    import zarr

    import actstore
    from actstore.errors import StoreError

    model = actstore.load_model(str(tiny_model_dirs["gpt2"]))
    store = tmp_path / "old.zarr"
    actstore.capture_to_store(model, a_heavy_pairs, store, layers="1", swap_options=False, progress=False)
    group = zarr.open_group(store, mode="a")["tiny-gpt2"]
    del group["question"], group["order"]  # as a group written before these coordinates
    assert "question" not in actstore.open_store(store).coords
    with pytest.raises(StoreError, match="created before actstore recorded option-swapped twins"):
        actstore.capture_to_store(model, a_heavy_pairs, store, layers="1", progress=False)
    assert [r["state"] for r in actstore.store_info(store)["models"][0]["runs"]] == ["complete"]  # no run added
    other = tmp_path / "other.json"
    other.write_text(a_heavy_pairs.read_text().replace("Would you", "Could you"))
    actstore.capture_to_store(model, other, store, layers="1", swap_options=False, progress=False)
    assert actstore.open_store(store).sizes["sample"] == 4 * len(ASKS)
    assert actstore.verify_store(store)[0].ok
    with pytest.raises(StoreError, match=r"has no coordinate\(s\) \['order'\]"):
        actstore.open_store(store, coords=("class", "order"))
