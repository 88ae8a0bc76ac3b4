"""AxBench Concept10 on a chat model and on gemma-3-270m: prompting against steering, judged (issue 28 §6 (i)).

    python studies/generation_axbench.py validate [--out studies/results/generation]
    python studies/generation_axbench.py validate-classifier [--out ...]
    python studies/generation_axbench.py run --model instruct|demo [--concepts 0,1,...] [--work DIR] [--out ...]
    python studies/generation_axbench.py summarize [--out ...]

Runs studies/results/generation/PLAN.md. ``validate``: the judge (the embedded instruct model) on each
concept's labelled eval rows (`actstore judge validate`'s library call), per concept and pooled.
``run``: per concept, its 72 training positives against the 216 shared negatives, each an exchange
(instruction, response), captured at response-mean at the plan's layer; then one sweep per concept
(`actstore eval --prompts ... --judge axbench --methods enr,prompt --k 64,dense --fractions
0.5,1,2 --select-split 0.5`; amendment 1: 16 prompts, 3 factors, the concept rating from a TF-IDF
classifier validated by ``validate-classifier``, instruction and fluency from the LM judge).
``summarize``: the primary contrasts P1 = prompt - dense and P2 = k64 - dense at each vector's
selected factor, on the report prompts, per model, with a t interval over the 10 concept means and
one over the (concept, instruction) pairs, Holm over the 4 tests (per measure: harmonic, concept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))  # _common: machine, git_rev, the shared data
from _common import SHARED_DATA, git_rev, machine  # noqa: E402

SETTING = SHARED_DATA / "axbench-concept10" / "prod_2b_l10_v1"
LAYERS = {"instruct": 12, "demo": 7}
FRACTIONS = (0.5, 1.0, 2.0)  # amendment 1 (planned: 0.25, 0.5, 1, 2)
N_PROMPTS, N_TOKENS, BATCH = 16, 32, 16  # amendment 1 (planned: 32 prompts)
OUT = HERE / "results" / "generation"
AXBENCH_PROMPT_MINUS_DIFFMEAN = 0.401  # Wu et al. 2025, Gemma-2-2B layer 10, 0-2 scale, no interval


def concepts() -> dict[int, str]:
    rows = [json.loads(line) for line in (SETTING / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return {int(row["concept_id"]): row["concept"] for row in rows}


def model_path(name: str) -> Path:
    from actstore.models.embedded import prepare_demo_model, prepare_instruct_model

    return prepare_instruct_model() if name == "instruct" else prepare_demo_model()


def validate(out: Path, concept_ids: list[int]) -> None:
    """The judge on each concept's eval rows; per-concept CSV/JSON and the pooled summary."""
    from actstore.evaluation.judges import make_judge, validate_judge

    judge = make_judge("axbench", judge_model=str(model_path("instruct")), batch_size=BATCH, progress=False)
    evaluation = pd.read_parquet(SETTING / "latent_eval_data.parquet")
    folder = out / "judge"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for concept_id in concept_ids:
        concept = concepts()[concept_id]
        items = evaluation[evaluation["concept_id"] == concept_id]
        labelled = pd.DataFrame({"prompt": items["input"], "response": items["output"], "label": items["category"]})
        began = time.perf_counter()
        result = validate_judge(judge, labelled, concept, seed=concept_id)
        result.write(folder / f"concept{concept_id}.csv")
        print(f"concept {concept_id}: {result.summary()} ({time.perf_counter() - began:.0f} s)", flush=True)
    rows = []
    for concept_id, concept in concepts().items():
        path = folder / f"concept{concept_id}.csv.json"
        if path.is_file():
            from actstore.evaluation.judges import JudgeValidation

            result = JudgeValidation.from_json(path.read_text())
            rows.append({"concept_id": concept_id, "concept": concept,
                         **{f"auroc_{name}{suffix}": getattr(getattr(result, f"vs_{name}"), field)
                            for name in ("negative", "hard_negative")
                            for suffix, field in (("", "estimate"), ("_low", "low"), ("_high", "high"))}})
    table = pd.DataFrame(rows)
    table.to_csv(folder / "validation.csv", index=False)
    (folder / "VALIDATION.md").write_text(validation_markdown(table, time.perf_counter() - started))


class TextClassifierJudge:
    """The concept rating from a TF-IDF (word 1-2 grams) logistic regression fitted on labelled texts,
    2 x P(positive | response); instruction and fluency from the LM judge ``rubrics`` (None: concept
    only). ``name`` labels the judge in the sweep's settings."""

    def __init__(self, texts, labels, rubrics, name: str):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.classifier = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                                        LogisticRegression(max_iter=1000))
        self.classifier.fit(list(texts), np.asarray(labels, dtype=int))
        self.rubrics, self.name = rubrics, f"{name}+{getattr(rubrics, 'name', 'judge')}"

    def rate_rubric(self, rubric, instructions, responses, concept) -> np.ndarray:
        if rubric == "concept":
            return 2.0 * self.classifier.predict_proba(list(responses))[:, 1]
        return self.rubrics.rate_rubric(rubric, instructions, responses, concept)

    def rate(self, instructions, responses, concept):
        from actstore.evaluation.judges import RUBRICS, Ratings

        return Ratings.from_rubrics({r: self.rate_rubric(r, instructions, responses, concept) for r in RUBRICS})


class ClassifierJudge(TextClassifierJudge):
    """Amendment 1: the classifier fitted on the concept's training rows (its 72 positives against the
    216 shared negatives)."""

    def __init__(self, concept_id: int, rubrics):
        train = pd.read_parquet(SETTING / "train_data.parquet")
        rows = train[train["concept_id"].isin([concept_id, -1])]
        super().__init__(rows["output"], (rows["concept_id"] == concept_id).astype(int), rubrics,
                         f"tfidf-concept{concept_id}")


def validate_classifier(out: Path) -> None:
    """Amendment 1's check of the classifier concept scorer on the eval rows (before any sweep)."""
    from actstore.evaluation.judges import validate_judge

    evaluation = pd.read_parquet(SETTING / "latent_eval_data.parquet")
    folder = out / "classifier"
    folder.mkdir(parents=True, exist_ok=True)
    started, rows = time.perf_counter(), []
    for concept_id, concept in concepts().items():
        items = evaluation[evaluation["concept_id"] == concept_id]
        labelled = pd.DataFrame({"prompt": items["input"], "response": items["output"], "label": items["category"]})
        result = validate_judge(ClassifierJudge(concept_id, None), labelled, concept, seed=concept_id)
        result.write(folder / f"concept{concept_id}.csv")
        print(f"concept {concept_id}: {result.summary()}", flush=True)
        rows.append(_validation_row(concept_id, concept, result))
    table = pd.DataFrame(rows)
    table.to_csv(folder / "validation.csv", index=False)
    text = validation_markdown(table, time.perf_counter() - started).replace(
        "SmolLM2-135M-Instruct, expected rating of the concept rubric", "TF-IDF logistic regression, amendment 1")
    (folder / "VALIDATION.md").write_text(text.replace("generation_axbench.py validate", "generation_axbench.py "
                                                        "validate-classifier"))


def _validation_row(concept_id: int, concept: str, result) -> dict:
    return {"concept_id": concept_id, "concept": concept,
            **{f"auroc_{name}{suffix}": getattr(getattr(result, f"vs_{name}"), field)
               for name in ("negative", "hard_negative")
               for suffix, field in (("", "estimate"), ("_low", "low"), ("_high", "high"))}}


def t_interval(values) -> tuple[float, float, float, float]:
    """Mean, 95% t interval and two-sided p of the mean against 0."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    mean, sem = float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))
    half = float(stats.t.ppf(0.975, values.size - 1)) * sem
    p = float(2 * stats.t.sf(abs(mean) / sem, values.size - 1)) if sem > 0 else float("nan")
    return mean, mean - half, mean + half, p


def validation_markdown(table: pd.DataFrame, seconds: float) -> str:
    lines = ["# The judge's validation (SmolLM2-135M-Instruct, expected rating of the concept rubric)", "",
             f"`python studies/generation_axbench.py validate` ({git_rev()}, {machine()}, {seconds:.0f} s).", "",
             "| concept | AUROC pos vs neg [95% CI] | AUROC pos vs hard neg [95% CI] |", "|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.concept_id}: {row.concept[:60]} | {row.auroc_negative:.3f} "
                     f"[{row.auroc_negative_low:.3f}, {row.auroc_negative_high:.3f}] | {row.auroc_hard_negative:.3f} "
                     f"[{row.auroc_hard_negative_low:.3f}, {row.auroc_hard_negative_high:.3f}] |")
    for column, name in (("auroc_negative", "negative"), ("auroc_hard_negative", "hard negative")):
        mean, low, high, _ = t_interval(table[column])
        lines.append(f"\nPooled, positive vs {name}: mean AUROC over the 10 concepts **{mean:.3f} [{low:.3f}, "
                     f"{high:.3f}]** (t interval over concepts).")
    mean, low, _, _ = t_interval(table["auroc_negative"])
    verdict = "above" if low > 0.6 else "not above"
    lines.append(f"\nThe plan's rule: the pooled positive-vs-negative lower bound ({low:.3f}) is {verdict} 0.6.")
    return "\n".join(lines) + "\n"


def exchanges(concept_id: int, work: Path) -> Path:
    """The concept's training positives and the shared negatives as exchanges (JSONL)."""
    train = pd.read_parquet(SETTING / "train_data.parquet")
    rows = train[(train["concept_id"] == concept_id) | (train["concept_id"] == -1)]
    path = work / f"concept{concept_id}.jsonl"
    with path.open("w") as f:
        for row in rows.itertuples():
            label = "pos" if row.concept_id == concept_id else "neg"
            f.write(json.dumps({"prompt": row.input, "response": row.output, "label": label}) + "\n")
    return path


def held_out_prompts(work: Path) -> Path:
    instructions = json.loads((SHARED_DATA / "refusal-direction" / "harmless_val.json").read_text())[:N_PROMPTS]
    path = work / "prompts.json"
    path.write_text(json.dumps([row["instruction"] for row in instructions]))
    return path


def run(model: str, concept_ids: list[int], work: Path, out: Path, fractions=FRACTIONS) -> None:
    import actstore
    from actstore.evaluation import SweepRequest, run_sweep
    from actstore.models.load import load_model

    layer = LAYERS[model]
    loaded = load_model(str(model_path(model)))
    template = bool(getattr(loaded.tokenizer, "chat_template", None))
    work.mkdir(parents=True, exist_ok=True)
    prompts = held_out_prompts(work)
    from actstore.evaluation.judges import make_judge

    rubrics = make_judge("axbench", judge_model=str(model_path("instruct")), batch_size=BATCH)
    for concept_id in concept_ids:
        concept = concepts()[concept_id]
        store = work / f"{model}-concept{concept_id}.zarr"
        started = time.perf_counter()
        actstore.capture_to_store(loaded, exchanges(concept_id, work), store, layers=str(layer),
                                  position="response-mean", chat_template=template, resume=store.exists(),
                                  progress=False)
        captured = time.perf_counter() - started
        request = SweepRequest(store=store, out=out / model / f"concept{concept_id}", layers=str(layer),
                               prompts=prompts, judge=ClassifierJudge(concept_id, rubrics), concept=concept,
                               judge_validation=_validation(out, concept_id),
                               methods=("enr", "prompt"), ks=(64, None), fractions=fractions, select_split=0.5,
                               chat_template=template, max_new_tokens=N_TOKENS, batch_size=BATCH, progress=True)
        run_sweep(loaded, request)
        print(f"{model} concept {concept_id}: capture {captured:.0f} s, sweep {time.perf_counter() - started:.0f} s",
              flush=True)


def _validation(out: Path, concept_id: int) -> Path | None:
    path = out / "classifier" / f"concept{concept_id}.csv.json"  # amendment 1's concept scorer
    return path if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("validate", "validate-classifier", "run", "summarize"))
    parser.add_argument("--model", choices=sorted(LAYERS), default="instruct")
    parser.add_argument("--concepts", default=",".join(str(i) for i in range(10)))
    parser.add_argument("--work", type=Path, default=Path("/tmp/actstore-generation"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)),
                        help="run: the vectors' factors (amendment 3 adds 0.125,0.25 to the same folders)")
    args = parser.parse_args()
    if args.step == "validate":
        validate(args.out, [int(c) for c in args.concepts.split(",")])
    elif args.step == "validate-classifier":
        validate_classifier(args.out)
    elif args.step == "run":
        run(args.model, [int(c) for c in args.concepts.split(",")], args.work, args.out,
            tuple(float(f) for f in args.fractions.split(",")))
    else:
        from generation_summary import summarize

        summarize(args.out)


if __name__ == "__main__":
    main()
