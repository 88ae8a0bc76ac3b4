"""CAA open-ended questions on the chat model: sparse against dense at matched damage, judged (issue 28 §6 (ii)).

    python studies/generation_caa.py run [--behaviors survival-instinct,corrigible-neutral-HHH] [--work DIR] [--out DIR]
    python studies/generation_caa.py validate [--no-lm-judge] [--out DIR]
    python studies/generation_caa.py sweep [--work /work/genwork] [--out studies/results/generation/caa]
    python studies/generation_caa.py summarize [--out ...]

Runs study (ii) of studies/results/generation/PLAN.md as amendment 3 (items 4 and 5) sets it: M1 (the
embedded SmolLM2-135M-Instruct) only, layer 12, its chat template. ``run`` is validate, sweep and summarize
in turn, each resumable (a rerun skips the LM judge's finished validations and the sweeps' measured rows).

``validate``: per behavior, the on-target concept scorer: a TF-IDF (word 1-2 grams, sublinear tf) logistic
regression fitted on the texts of train.json's answer options (the behavior-matching option = 1, the other
= 0; question excluded; options read by ``actstore.inputs.ab``), rating = 2 x P(matching). Both it and the
LM judge's concept rubric are validated on test.json's answer options (``validate_judge``: AUROC with a
bootstrap interval; rule: lower bound above 0.6). CAA options have no hard negatives: that AUROC is n/a.
Writes ``<out>/<behavior>/VALIDATION.md``, validation.csv and each scorer's CSV and JSON.

``sweep``: per behavior, train.json's A/B items whose question is not one of the 50 open-ended questions
(compared as ``question_text``, case-folded, a leading "Question:" dropped; the count dropped is in
``caa_run.json``), as CAA records (question as the user turn, "(X)" as the assistant's), captured with the
chat template at the answer letter (``last-N``, N found and checked on every text with the tokenizer, and
checked again on the store's ``token_index``) with the option-swapped twins; then one sweep: the
open-ended questions, enr k 64 and dense at fractions 0.125-1, budgets 1.05 and 1.25, no select split,
32 greedy tokens; concept from the classifier, instruction and fluency from the LM judge.

``summarize``: generation_caa_summary.py (k64 - dense on the concept rating at matched perplexity damage).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))  # _common: machine, git_rev, the shared data
from _common import SHARED_DATA, git_rev, machine  # noqa: E402
from generation_axbench import TextClassifierJudge  # noqa: E402  (the same classifier recipe)

CAA = SHARED_DATA / "caa-pairs"
BEHAVIORS = {"survival-instinct": "a wish to keep existing and avoid being shut down",  # the plan's concepts
             "corrigible-neutral-HHH": "willingness to accept changes to its goals"}
LAYER, KS, METHODS = 12, (64, None), ("enr",)
FRACTIONS = (0.125, 0.25, 0.5, 1.0)  # amendment 3, item 4
BUDGETS = (1.05, 1.25)  # 1.05: the plan's test; 1.25: amendment 3
N_TOKENS, BATCH = 32, 16
PASS_LOW = 0.6  # a scorer passes if its AUROC's lower bound is above this
JUDGE_TOKENS_PER_SECOND = 320.0  # the LM judge's measured reading rate on this CPU (amendment 1)
LM_SECONDS_CAP, LM_SUBSET = 900.0, 200  # longer than ~15 minutes: a seeded subset of at most 200 rows
OUT = HERE / "results" / "generation" / "caa"
WORK = Path("/work/genwork")
_QUESTION_LABEL = re.compile(r"^question\s*:\s*", re.IGNORECASE)  # most survival-instinct train items start so


def read_items(behavior: str, name: str) -> list[dict]:
    return json.loads((CAA / behavior / f"{name}.json").read_text())


def normalised_question(text: str) -> str:
    """What the overlap filter compares: the question without choices or answer (the project's
    ``question_text``, whitespace runs made one space), a leading "Question:" dropped, case-folded."""
    from actstore.evaluation.overlap import question_text

    return _QUESTION_LABEL.sub("", question_text(text)).casefold()


def training_split(items: list[dict], open_ended: list[dict]) -> tuple[list[dict], int]:
    """The A/B items whose question is not an open-ended question, and how many were dropped."""
    asked = {normalised_question(row["question"]) for row in open_ended}
    kept = [item for item in items if normalised_question(item["positive"]) not in asked]
    return kept, len(items) - len(kept)


def ab_items(items: list[dict], where: str) -> list:
    """Each pair as an :class:`actstore.inputs.ab.ABQuestion` (question, matching and other letter)."""
    from actstore.inputs.ab import ab_question

    return [ab_question(item["positive"], item["negative"], where=f"{where} item {i + 1}")
            for i, item in enumerate(items)]


def option_rows(items: list[dict], where: str) -> pd.DataFrame:
    """Labelled rows for ``validate_judge``: per item, the text of its behavior-matching option
    (label positive) and of the other (negative), the question without choices as the prompt."""
    from actstore.evaluation.overlap import question_text

    rows = []
    for i, q in enumerate(ab_items(items, where)):
        options = q.options(where=f"{where} item {i + 1}")
        for letter, label in ((q.matching, "positive"), (q.other, "negative")):
            rows.append({"prompt": question_text(q.question), "response": options[letter].strip(), "label": label})
    return pd.DataFrame(rows, columns=["prompt", "response", "label"])


def caa_records(items: list[dict], where: str) -> list[dict]:
    """The pairs as CAA records (``question``, ``answer_matching_behavior``, ...): with a chat template
    the capture puts the question in the user turn and the answer "(X)" in the assistant's."""
    return [{"question": q.question.rstrip(), "answer_matching_behavior": f"({q.matching})",
             "answer_not_matching_behavior": f"({q.other})"} for q in ab_items(items, where)]


class OptionJudge(TextClassifierJudge):
    """Amendment 3 item 4: the classifier fitted on answer-option texts (2 x P(matching | response));
    instruction and fluency from the LM judge ``rubrics`` (None: concept only)."""

    def __init__(self, behavior: str, texts, labels, rubrics=None):
        super().__init__(texts, labels, rubrics, f"tfidf-{behavior}")

    @classmethod
    def of(cls, behavior: str, rubrics=None) -> OptionJudge:
        rows = option_rows(read_items(behavior, "train"), f"{behavior}/train.json")
        return cls(behavior, rows["response"], rows["label"] == "positive", rubrics)


def passes(validation) -> bool:
    """The plan's rule: the positive-vs-negative AUROC's lower bound above 0.6."""
    return bool(np.isfinite(validation.vs_negative.low) and validation.vs_negative.low > PASS_LOW)


def lm_rows(judge, rows: pd.DataFrame, concept: str) -> tuple[pd.DataFrame, float]:
    """The rows the LM judge rates, and its estimated seconds for all of them (prompt tokens at its
    measured rate): all rows, or a seeded subset of ``LM_SUBSET`` where all would take over the cap."""
    prompts = judge.prompts("concept", list(rows["prompt"]), list(rows["response"]), concept)
    tokens = sum(len(ids) for ids in judge.loaded.tokenizer(prompts, add_special_tokens=False)["input_ids"])
    seconds = tokens / JUDGE_TOKENS_PER_SECOND
    if seconds <= LM_SECONDS_CAP or len(rows) <= LM_SUBSET:
        return rows, seconds
    return rows.sample(n=LM_SUBSET, random_state=0).sort_index(), seconds


def validate(behavior: str, out: Path, lm_judge: bool = True) -> dict:
    """Both scorers on test.json's answer options; writes the folder's validation files, returns its row."""
    from actstore.evaluation.judges import JudgeValidation, make_judge, validate_judge

    folder, concept = out / behavior, BEHAVIORS[behavior]
    folder.mkdir(parents=True, exist_ok=True)
    rows = option_rows(read_items(behavior, "test"), f"{behavior}/test.json")
    started = time.perf_counter()
    classifier = validate_judge(OptionJudge.of(behavior), rows, concept)
    classifier.write(folder / "classifier.csv")
    print(f"{behavior} classifier: {classifier.summary()}", flush=True)
    lm, lm_note = None, "not run (--no-lm-judge)"
    if lm_judge:
        saved = folder / "lm-judge.csv.json"
        judge = make_judge("axbench", judge_model=str(instruct_model()), batch_size=BATCH)
        chosen, estimate = lm_rows(judge, rows, concept)
        lm_note = (f"{len(chosen)} of {len(rows)} rows" + (" (a seeded random subset, seed 0: all would take about "
                   f"{estimate / 60:.0f} min)" if len(chosen) < len(rows) else ""))
        if saved.is_file():
            lm = JudgeValidation.from_json(saved.read_text())
        else:
            lm = validate_judge(judge, chosen, concept)
            lm.write(folder / "lm-judge.csv")
        print(f"{behavior} LM judge ({lm_note}): {lm.summary()}", flush=True)
    seconds = time.perf_counter() - started
    table = pd.DataFrame([_row(behavior, "classifier", classifier)] + ([_row(behavior, "lm-judge", lm)] if lm else []))
    table.to_csv(folder / "validation.csv", index=False)
    (folder / "VALIDATION.md").write_text(validation_markdown(behavior, rows, table, lm_note, seconds))
    return table.iloc[0].to_dict()


def _row(behavior: str, scorer: str, result) -> dict:
    n = result.counts
    return {"behavior": behavior, "scorer": scorer, "judge": result.judge, "n_matching": n["positive"],
            "n_other": n["negative"], "auroc": result.vs_negative.estimate, "auroc_low": result.vs_negative.low,
            "auroc_high": result.vs_negative.high, "passes": passes(result)}


def validation_markdown(behavior: str, rows: pd.DataFrame, table: pd.DataFrame, lm_note: str, seconds: float) -> str:
    train = option_rows(read_items(behavior, "train"), f"{behavior}/train.json")
    words = rows["response"].str.split().str.len()
    lines = [f"# Study (ii)'s on-target scorers: {behavior} (amendment 3, item 4)", "",
             f"`python studies/generation_caa.py validate` ({git_rev()}, {machine()}, {seconds:.0f} s). "
             f"Concept: \"{BEHAVIORS[behavior]}\".", "",
             f"- classifier: TF-IDF (word 1-2 grams, sublinear tf) logistic regression fitted on the {len(train)} "
             f"answer-option texts of train.json ({len(train) // 2} items; matching vs other, question excluded); "
             "rating 2 x P(matching).",
             "- LM judge: the embedded SmolLM2-135M-Instruct's concept rubric (expected rating): "
             f"{lm_note}.",
             f"- rows: test.json's answer options, {len(rows) // 2} items x 2 ({len(set(rows['response']))} distinct "
             f"texts; {(words <= 3).mean():.0%} of 3 words or fewer). CAA's options have no hard negatives: that "
             "AUROC is not defined and not reported.", "",
             "| scorer | n matching / other | AUROC matching vs other [95% CI] | rule: lower bound > 0.6 |",
             "|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.scorer} ({row.judge}) | {row.n_matching} / {row.n_other} | {row.auroc:.3f} "
                     f"[{row.auroc_low:.3f}, {row.auroc_high:.3f}] | {'passes' if row.passes else 'fails'} |")
    lines += ["", "Intervals: percentile bootstrap, 2000 resamples of options within each label (the options "
              "of one item are resampled independently: the pairing is ignored)."]
    return "\n".join(lines) + "\n"


def instruct_model() -> Path:
    from actstore.models.embedded import prepare_instruct_model

    return prepare_instruct_model()


def letter_positions(tokenizer, examples) -> tuple[int, np.ndarray]:
    """The offset back from the last token of each chat-formatted A/B text to its answer letter, one
    for all, and each text's letter index: the assistant-turn token that ends with the letter
    (``ChatFormat.tokens``, the capture's own formatting). Raises where a text has none or the offsets differ."""
    from actstore.errors import ActstoreError
    from actstore.inputs.ab import answer_letter
    from actstore.inputs.chat import ASSISTANT, ChatFormat

    chat, offsets, index = ChatFormat(template=True), set(), []
    for e in examples:
        tokens = chat.tokens(tokenizer, e.prompt, e.completion, e.where)
        letter = answer_letter(e.completion)
        found = [i for i in np.flatnonzero(tokens.roles == ASSISTANT)
                 if tokenizer.decode([tokens.ids[i]]).strip().endswith(letter)]
        if not found:
            raise ActstoreError(f"{e.where}: no assistant token ends with the answer letter {letter!r}")
        index.append(int(found[-1]))
        offsets.add(len(tokens.ids) - 1 - int(found[-1]))
    if len(offsets) != 1:
        raise ActstoreError(f"the answer letter lies at different offsets from the end: {sorted(offsets)}")
    return int(offsets.pop()), np.asarray(index, dtype=np.int64)


def prepare(behavior: str, work: Path, tokenizer) -> dict:
    """The filtered training file (CAA records), the open-ended prompts and the answer letter's offset."""
    from actstore.inputs.datasets import read_contrast_set, with_twins

    items = read_items(behavior, "train")
    kept, dropped = training_split(items, read_items(behavior, "open_ended"))
    train = work / f"caa-{behavior}-train.json"
    train.write_text(json.dumps(caa_records(kept, f"{behavior}/train.json"), indent=0))
    prompts = work / f"caa-{behavior}-open-ended.json"
    prompts.write_text(json.dumps([row["question"] for row in read_items(behavior, "open_ended")], indent=0))
    examples = with_twins(read_contrast_set(train)).examples
    offset, index = letter_positions(tokenizer, examples)
    return {"behavior": behavior, "train_items": len(items), "dropped_open_ended": dropped, "kept": len(kept),
            "texts_captured": len(examples), "train": str(train), "prompts": str(prompts),
            "position": f"last-{offset}", "offset": offset, "letter_index": index.tolist()}


def check_store(store: Path, letter_index: list[int]) -> None:
    """Every captured row sits at its text's answer-letter token (the store's ``token_index``)."""
    import actstore
    from actstore.errors import ActstoreError

    ds = actstore.open_store(store)
    expected = np.asarray(letter_index)[ds["text_index"].values]
    if not np.array_equal(ds["token_index"].values, expected):
        raise ActstoreError(f"{store}: captured token indices differ from the answer letters' "
                            f"({int((ds['token_index'].values != expected).sum())} rows)")


def sweep(behavior: str, work: Path, out: Path, loaded, rubrics) -> None:
    import actstore
    from actstore.evaluation import SweepRequest, run_sweep

    work.mkdir(parents=True, exist_ok=True)
    folder = out / behavior
    folder.mkdir(parents=True, exist_ok=True)
    plan = prepare(behavior, work, loaded.tokenizer)
    store = work / f"caa-{behavior}.zarr"
    started = time.perf_counter()
    actstore.capture_to_store(loaded, plan["train"], store, layers=str(LAYER), position="last", offset=plan["offset"],
                              chat_template=True, resume=store.exists(), progress=False)
    check_store(store, plan.pop("letter_index"))
    plan.update(capture_seconds=time.perf_counter() - started, store=str(store), git=git_rev(), machine=machine(),
                command=" ".join(sys.argv))
    (folder / "caa_run.json").write_text(json.dumps(plan, indent=1))  # the counts, before the long part
    validation = folder / "classifier.csv.json"
    request = SweepRequest(store=store, out=folder, layers=str(LAYER), prompts=plan["prompts"], behavior=behavior,
                           judge=OptionJudge.of(behavior, rubrics), concept=BEHAVIORS[behavior],
                           judge_validation=validation if validation.is_file() else None, methods=METHODS, ks=KS,
                           fractions=FRACTIONS, budgets=BUDGETS, chat_template=True, max_new_tokens=N_TOKENS,
                           batch_size=BATCH, progress=True)
    run_sweep(loaded, request)
    plan["sweep_seconds"] = time.perf_counter() - started  # capture included
    (folder / "caa_run.json").write_text(json.dumps(plan, indent=1))
    print(f"{behavior}: dropped {plan['dropped_open_ended']} of {plan['train_items']} train items, "
          f"captured at {plan['position']}, {plan['sweep_seconds']:.0f} s", flush=True)


def sweep_all(behaviors: list[str], work: Path, out: Path) -> None:
    from actstore.evaluation.judges import make_judge
    from actstore.models.load import load_model

    loaded = load_model(str(instruct_model()))
    rubrics = make_judge("axbench", judge_model=str(instruct_model()), batch_size=BATCH)
    for behavior in behaviors:
        sweep(behavior, work, out, loaded, rubrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("run", "validate", "sweep", "summarize"))
    parser.add_argument("--behaviors", default=",".join(BEHAVIORS))
    parser.add_argument("--work", type=Path, default=WORK, help="where the stores go (caa-<behavior>.zarr)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-lm-judge", action="store_true", help="validate: the classifier alone")
    args = parser.parse_args()
    behaviors = [b.strip() for b in args.behaviors.split(",") if b.strip()]
    unknown = sorted(set(behaviors) - set(BEHAVIORS))
    if unknown:
        parser.error(f"--behaviors: {unknown} not among {sorted(BEHAVIORS)}")
    if args.step in ("run", "validate"):
        for behavior in behaviors:
            validate(behavior, args.out, lm_judge=not args.no_lm_judge)
    if args.step in ("run", "sweep"):
        sweep_all(behaviors, args.work, args.out)
    if args.step in ("run", "summarize"):
        from generation_caa_summary import summarize

        summarize(args.out, behaviors)


if __name__ == "__main__":
    main()
