"""Amendment 3 item 2 of studies/results/generation/PLAN.md: the fluency check validated against blind labels.

    python studies/generation_fluency.py [--key /work/annot/key.csv] [--labels /work/annot/labels.csv]
                                         [--out studies/results/generation]

240 generations sampled from M1's sweep folders (concepts 0-7) were labelled ``broken`` or ``readable`` by
an annotator who saw only the instruction and the text. ``key.csv`` says where each sample came from
(concept, layer, method, k, alpha, item, text; ``sample_id`` s000..s239), ``labels.csv`` holds the labels
(sample_id, label). Both are copied to ``<out>/fluency/``. Measured:

* :func:`actstore.evaluation.scorers.is_degenerate` against ``broken``: sensitivity and specificity with
  Wilson 95% intervals, and Cohen's kappa;
* the LM judge's fluency rating (items.csv of the sample's concept folder, matched by method, k, alpha and
  item, one row each): its AUROC readable vs broken with a 2000-resample bootstrap interval over items.

The plan's rule: ``is_degenerate`` becomes the fluency gate only if both Wilson lower bounds are at least
0.7; the LM fluency rating counts as validated only if its AUROC's lower bound is above 0.6. Writes
``fluency/VALIDATION.md``, ``fluency/validation.json`` (read by ``generation_summary``) and
``fluency/samples.csv`` (each sample's label, detector flag and rating).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from generation_axbench import OUT, git_rev
from generation_selection import arm, with_texts

LABELS = ("broken", "readable")
GATE_LOWER = 0.7  # both Wilson lower bounds at least this: the gate is used
AUROC_LOWER = 0.6  # the fluency rating's AUROC lower bound above this: validated
_MATCH = ["method", "k", "alpha_key", "item"]


def load_labelled(key: Path, labels: Path) -> pd.DataFrame:
    """key.csv joined to labels.csv by ``sample_id``: every sample labelled exactly once, with a known label."""
    samples = pd.read_csv(key, dtype={"k": str, "sample_id": str, "item": str})
    marks = pd.read_csv(labels, dtype=str)
    if list(marks.columns[:2]) != ["sample_id", "label"]:
        raise ValueError(f"{labels}: expected the columns sample_id,label, got {list(marks.columns)}")
    marks = marks.assign(label=marks["label"].str.strip().str.lower(), sample_id=marks["sample_id"].str.strip())
    unknown = sorted(set(marks["label"]) - set(LABELS))
    if unknown:
        raise ValueError(f"{labels}: labels {unknown}; expected broken or readable")
    if marks["sample_id"].duplicated().any() or set(marks["sample_id"]) != set(samples["sample_id"]):
        missing = sorted(set(samples["sample_id"]) - set(marks["sample_id"]))
        extra = sorted(set(marks["sample_id"]) - set(samples["sample_id"]))
        raise ValueError(f"{labels}: every sample of {key} labelled once expected; missing {missing[:5]} "
                         f"({len(missing)}), unknown {extra[:5]} ({len(extra)}), "
                         f"{int(marks['sample_id'].duplicated().sum())} repeated")
    return samples.merge(marks[["sample_id", "label"]], on="sample_id", validate="one_to_one")


def with_ratings(labelled: pd.DataFrame, sweeps: Path) -> pd.DataFrame:
    """Each sample with its LM fluency rating and its generation's text as the sweep wrote it
    (``sweep_text``): items.csv and generations.jsonl of ``<sweeps>/concept<c>``, matched by method, k, alpha
    and item; exactly one row each, else an error naming the concept."""
    frames = []
    for concept, samples in labelled.groupby("concept"):
        folder = sweeps / f"concept{concept}"
        items, _ = with_texts(pd.read_csv(folder / "items.csv", dtype={"k": str}), folder / "generations.jsonl")
        items = items.assign(alpha_key=items["alpha"].astype(float).round(9))
        found = samples.assign(alpha_key=samples["alpha"].astype(float).round(9)).merge(
            items[[*_MATCH, "fluency_rating", "text"]].rename(columns={"text": "sweep_text"}), on=_MATCH,
            how="left", indicator=True)
        if len(found) != len(samples) or (found["_merge"] != "both").any():
            raise ValueError(f"{folder}: {len(samples)} samples matched {len(found)} items.csv rows "
                             f"({int((found['_merge'] != 'both').sum())} unmatched); one row each expected")
        frames.append(found.drop(columns=["_merge", "alpha_key"]))
    return pd.concat(frames).sort_values("sample_id").reset_index(drop=True)


def wilson(successes: int, trials: int) -> dict:
    """A proportion with its Wilson 95% interval (scipy's binomtest; statsmodels is not installed here)."""
    from scipy.stats import binomtest

    if not trials:
        return {"estimate": float("nan"), "low": float("nan"), "high": float("nan"), "k": 0, "n": 0}
    interval = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return {"estimate": successes / trials, "low": float(interval.low), "high": float(interval.high),
            "k": int(successes), "n": int(trials)}


def measure(table: pd.DataFrame) -> dict:
    """The figures and verdicts of the plan's rule from a table with ``label``, ``degenerate`` and
    ``fluency_rating``."""
    from sklearn.metrics import cohen_kappa_score

    from actstore.evaluation.judge_validation import auroc_interval

    broken = (table["label"] == "broken").to_numpy()
    flagged = table["degenerate"].astype(bool).to_numpy()
    sensitivity = wilson(int((flagged & broken).sum()), int(broken.sum()))
    specificity = wilson(int((~flagged & ~broken).sum()), int((~broken).sum()))
    kappa = float(cohen_kappa_score(broken, flagged))
    rating = table["fluency_rating"].to_numpy(dtype=np.float64)
    auroc = auroc_interval(rating[~broken], rating[broken])  # readable as the positive class
    gate = bool(sensitivity["low"] >= GATE_LOWER and specificity["low"] >= GATE_LOWER)
    return {"samples": len(table), "broken": int(broken.sum()), "readable": int((~broken).sum()),
            "sensitivity": sensitivity, "specificity": specificity, "kappa": kappa,
            "auroc": {"estimate": auroc.estimate, "low": auroc.low, "high": auroc.high, "resamples": 2000},
            "gate": gate, "lm_fluency_validated": bool(auroc.low > AUROC_LOWER)}


def _share(part: dict) -> str:
    return f"{part['estimate']:.3f} [{part['low']:.3f}, {part['high']:.3f}] ({part['k']}/{part['n']})"


def verdict_line(verdict: dict | None) -> str:
    """SUMMARY.md's first line: the fluency validation and what it decided."""
    if verdict is None:
        return ("Fluency validation (amendment 3 item 2): not yet run (no fluency/validation.json): the fluency "
                "gate is not used and the capped selection uses the plan's harmonic.")
    auroc = verdict["auroc"]
    return (f"Fluency validation (amendment 3 item 2, `fluency/VALIDATION.md`, {verdict['samples']} blind-labelled "
            f"generations, {verdict['broken']} broken): `is_degenerate` sensitivity {_share(verdict['sensitivity'])}, "
            f"specificity {_share(verdict['specificity'])}, Cohen's kappa {verdict['kappa']:.3f} -> the gate is "
            f"**{'used' if verdict['gate'] else 'not used'}**; the LM judge's fluency rating AUROC readable vs "
            f"broken {auroc['estimate']:.3f} [{auroc['low']:.3f}, {auroc['high']:.3f}] -> "
            f"**{'validated' if verdict['lm_fluency_validated'] else 'not validated'}**.")


def read_verdict(folder: Path) -> dict | None:
    path = folder / "validation.json"
    return json.loads(path.read_text()) if path.is_file() else None


def breakdown_lines(table: pd.DataFrame) -> list[str]:
    """Per arm and factor: how many samples, how many labelled broken, how many flagged degenerate."""
    lines = ["| arm | factor | samples | labelled broken | flagged degenerate | both |", "|---|---|---|---|---|---|"]
    arms = table.assign(arm=[arm(m, k) for m, k in zip(table["method"], table["k"])])
    for (name, alpha), rows in arms.groupby(["arm", "alpha"], sort=True):
        broken, flagged = rows["label"] == "broken", rows["degenerate"].astype(bool)
        lines.append(f"| {name} | {alpha:g} | {len(rows)} | {int(broken.sum())} | {int(flagged.sum())} | "
                     f"{int((broken & flagged).sum())} |")
    return lines


def validation_markdown(verdict: dict, table: pd.DataFrame, command: str) -> str:
    sens, spec, auroc = verdict["sensitivity"], verdict["specificity"], verdict["auroc"]
    gate = "at least" if verdict["gate"] else "not both at least"
    lm = "above" if verdict["lm_fluency_validated"] else "not above"
    lines = ["# The fluency check against blind labels (PLAN.md amendment 3 item 2)", "",
             f"`{command}` ({git_rev()}). Inputs: `key.csv` (where each sample came from) and `labels.csv` (the "
             "annotator's labels), copied here; per sample: `samples.csv`.", "",
             f"Samples: {verdict['samples']} (M1 sweep folders, concepts 0-7); labelled broken "
             f"{verdict['broken']}, readable {verdict['readable']}. Every sample matched exactly one items.csv row "
             f"(its fluency rating); the key's text equals the sweep's generation in "
             f"{int(table['text_matches'].sum())} of {len(table)}.", "",
             "| figure | estimate [95% interval] |", "|---|---|",
             f"| `is_degenerate` sensitivity for broken (Wilson) | {_share(sens)} |",
             f"| `is_degenerate` specificity (readable not flagged; Wilson) | {_share(spec)} |",
             f"| Cohen's kappa, `is_degenerate` vs the labels | {verdict['kappa']:.3f} |",
             f"| LM judge's fluency rating, AUROC readable vs broken (bootstrap, 2000 resamples over items, within "
             f"each class) | {auroc['estimate']:.3f} [{auroc['low']:.3f}, {auroc['high']:.3f}] |", "",
             f"**The gate**: the Wilson lower bounds ({sens['low']:.3f}, {spec['low']:.3f}) are {gate} "
             f"{GATE_LOWER:g}: `is_degenerate` is **{'used' if verdict['gate'] else 'not used'}** as the fluency "
             "gate (gated harmonic = 0 where the text is degenerate, else the plan's harmonic; reported beside the "
             "plan's harmonic, never instead of it).", "",
             f"**The LM fluency rating**: its AUROC's lower bound ({auroc['low']:.3f}) is {lm} {AUROC_LOWER:g}: "
             f"**{'validated' if verdict['lm_fluency_validated'] else 'not validated'}**.", "",
             "By arm and factor (the sample is uniform over the folders' generations, so these counts are small):",
             "", *breakdown_lines(table)]
    return "\n".join(lines) + "\n"


def validate(key: Path, labels: Path, out: Path, model: str = "instruct") -> dict:
    """Copy the key and labels to ``<out>/fluency``, measure, write VALIDATION.md, validation.json and
    samples.csv there; returns the verdict."""
    folder = out / "fluency"
    folder.mkdir(parents=True, exist_ok=True)
    for source in (key, labels):
        if source.resolve() != (folder / source.name).resolve():
            shutil.copyfile(source, folder / source.name)
    table = with_ratings(load_labelled(folder / key.name, folder / labels.name), out / model)
    table = table.assign(text_matches=table["text"] == table["sweep_text"],
                         degenerate=table["text"].map(_is_degenerate))
    verdict = measure(table)
    columns = ["sample_id", "concept", "method", "k", "alpha", "item", "label", "degenerate", "fluency_rating",
               "text_matches"]
    table[columns].to_csv(folder / "samples.csv", index=False)
    (folder / "validation.json").write_text(json.dumps(verdict, indent=2) + "\n")
    command = f"python studies/generation_fluency.py --key {key} --labels {labels}"
    (folder / "VALIDATION.md").write_text(validation_markdown(verdict, table, command))
    return verdict


def _is_degenerate(text) -> bool:
    from actstore.evaluation.scorers import is_degenerate

    return bool(is_degenerate(text if isinstance(text, str) else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", type=Path, default=Path("/work/annot/key.csv"))
    parser.add_argument("--labels", type=Path, default=Path("/work/annot/labels.csv"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    print(verdict_line(validate(args.key, args.labels, args.out)))


if __name__ == "__main__":
    main()
