"""What a sweep folder says: results.md, frontier.csv, contrasts.csv, steerability.csv, plots.

:func:`write_report` reads the folder (:class:`~actstore.evaluation.ledger.Ledger`)
and writes, beside its tables:

* frontier.csv (:func:`actstore.evaluation.frontier.frontier`): every vector's
  shift at exactly each budget, interpolated, with the paired difference from
  the dense vector and the fraction of it, intervals from a bootstrap that
  redoes the interpolation;
* contrasts.csv: the primary contrasts, Holm-corrected as a family, each bootstrap p-value with
  its Monte-Carlo standard error (``p_mc_se``, ``p_holm_mc_se``: results.md calls a Holm verdict
  within two of them of 0.05 borderline) and, with a margin stated before use (``--margin``),
  non-inferiority and equivalence (TOST) verdicts on the contrast's own scale (``margin``,
  ``ci90_low``, ``ci90_high``, ``non_inferior``, ``equivalent``; :mod:`.report_text`);
* steerability.csv: per vector, the per-question slopes;
* results.md: counts that say how many would be expected by chance and how many
  survive Benjamini-Hochberg, with their signs; where the log-odds and the
  probability scale disagree; the letter bias; the frontier; the contrasts; the
  KL damage beside the perplexity inflation where the sweep measured it; with a
  judge, its validation summary (or the sentence that it was not validated) at the
  top, and that only orderings and paired differences within one judge mean
  anything; the selected alphas and the prompting baseline against them
  (:mod:`actstore.evaluation.selection`);
* frontier_<behavior>.png: the interpolated curves with their bands.

The plots are drawn by :mod:`.plots`; the contrasts' section of results.md is :mod:`.report_text`'s.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..vectors.info import parse_k
from .files import replace_file
from .frontier import Contrast, contrasts, frontier, steerability
from .grid import is_control, is_prompt
from .intervals import Analysis
from .paths import Evidence, Paths
from .plots import plot_frontier, plot_separation
from .report_text import ALPHA_LEVEL, contrast_lines
from .report_text import ci as _ci
from .report_text import fmt as _fmt
from .report_text import md_table as _md_table
from .rows import JUDGE_NOTE, ContrastRow, FrontierRow, SteerabilityRow, as_record, columns, primary_columns
from .selection import prompt_contrasts, report_intervals


def _vector(row) -> str:
    if is_prompt(row["method"]):
        return "prompt (instruction, no vector)"
    return f"{row['method']} k={row['k']}" if parse_k(row["k"]) is not None else f"{row['method']} {row['k']}"


def count_line(results, what: str = "configurations") -> str:
    """"k of M have an interval excluding zero (M x 0.05 expected with no effect at all): a up,
    b down; j at q < 0.05 (c up, d down)", on the primary measure."""
    shift, low, high = primary_columns(str(results["measure"].iloc[0]) if len(results) else "score")
    m = len(results)
    up = int((results[low] > 0).sum())
    down = int((results[high] < 0).sum())
    q = results["q_value"].to_numpy(dtype=float) if "q_value" in results else np.full(m, np.nan)
    sig = q < ALPHA_LEVEL
    q_up = int((sig & (results[shift].to_numpy(dtype=float) > 0)).sum())
    q_down = int((sig & (results[shift].to_numpy(dtype=float) < 0)).sum())
    return (f"{up + down} of {m} {what} have an interval excluding zero ({m} x {ALPHA_LEVEL:g} = "
            f"{m * ALPHA_LEVEL:.2g} expected with no effect at all): {up} up, {down} down; "
            f"{q_up + q_down} at q < {ALPHA_LEVEL:g} (Benjamini-Hochberg; {q_up} up, {q_down} down)")


def _count_lines(results) -> list[str]:
    measure = str(results["measure"].iloc[0])
    judged = str(results["protocol"].iloc[0]).startswith("generation:judge:") if "protocol" in results else False
    scale = ("log-odds of the matching letter (both answer orders)" if measure == "logodds" else
             "judge's harmonic mean of its concept, instruction and fluency ratings (each 0-2)" if judged else "score")
    lines = [f"Primary measure: the shift in the {scale}, per question, paired t interval over questions.", ""]
    methods = results[~results["method"].map(is_control) & ~results["method"].map(is_prompt)]
    controls = results[results["method"].map(is_control)]
    lines.append("- Vectors: " + count_line(methods) + ".")
    if len(controls):
        lines.append("- Controls (random directions, the letter direction): " + count_line(controls) + ".")
    shift, low, high = primary_columns(measure)
    found = results[(results["q_value"] < ALPHA_LEVEL)].sort_values(shift, ascending=False)
    if len(found):
        lines += ["", f"At q < {ALPHA_LEVEL:g}:"]
        for row in found.head(12).to_dict("records"):
            lines.append(f"- layer {row['layer']} {_vector(row)} alpha {row['alpha']:.4g}: shift "
                         f"{_ci(row[shift], row[low], row[high])}, q {row['q_value']:.2g}, inflation "
                         f"{_ci(row['ppl_inflation'], row['ppl_inflation_ci_low'], row['ppl_inflation_ci_high'])}")
        if len(found) > 12:
            lines.append(f"- ... and {len(found) - 12} more (results.csv, column q_value)")
    half = (results[high] - results[low]) / 2
    if len(results) and half.min() > results[shift].abs().max():
        lines += ["", f"**Warning: too few items to tell.** Every interval is wider (half-width >= {half.min():.3g}) "
                  f"than every measured effect (largest |shift| {results[shift].abs().max():.3g}): use more test "
                  "items."]
    return lines


def _scale_lines(results) -> list[str]:
    """A/B: where the log-odds and the probability scale disagree; the letter bias."""
    if str(results["measure"].iloc[0]) != "logodds":
        return []
    lo = np.sign(np.where(results["shift_logodds_ci_low"] > 0, 1, np.where(results["shift_logodds_ci_high"] < 0,
                                                                           -1, 0)))
    pr = np.where(results["on_target_ci_low"] > 0, 1, np.where(results["on_target_ci_high"] < 0, -1, 0))
    disagree = results[lo != pr]
    lines = ["## The two scales and the answer letter", "",
             f"An effect is **established** only where the log-odds and the probability-scale shift both exclude "
             f"zero on the same side: {int(results['established'].astype(bool).sum())} of {len(results)} "
             f"configurations. The scales disagree in {len(disagree)}"
             + (":" if len(disagree) else ".")]
    for row in disagree.head(10).to_dict("records"):
        lines.append(f"- layer {row['layer']} {_vector(row)} alpha {row['alpha']:.4g}: log-odds "
                     f"{_ci(row['shift_logodds'], row['shift_logodds_ci_low'], row['shift_logodds_ci_high'])}, "
                     f"probability {_ci(row['on_target_shift'], row['on_target_ci_low'], row['on_target_ci_high'])}")
    if len(disagree) > 10:
        lines.append(f"- ... and {len(disagree) - 10} more")
    bias = results[(results["letter_bias_ci_low"] > 0) | (results["letter_bias_ci_high"] < 0)]
    lines += ["", "Letter bias: per question, half the difference between its two answer orders' log-odds shifts, "
              "signed toward the earlier letter of its pair (A of A/B); it cancels in the shifts above. "
              f"{len(bias)} of {len(results)} configurations push a letter detectably "
              f"({int((bias['letter_bias'] > 0).sum())} toward the earlier letter, "
              f"{int((bias['letter_bias'] < 0).sum())} toward the later)"
              + (", the largest:" if len(bias) else ".")]
    for row in bias.reindex(bias["letter_bias"].abs().sort_values(ascending=False).index).head(5).to_dict("records"):
        lines.append(f"- layer {row['layer']} {_vector(row)} alpha {row['alpha']:.4g}: letter bias "
                     f"{_ci(row['letter_bias'], row['letter_bias_ci_low'], row['letter_bias_ci_high'])} log-odds")
    return lines + [""]


def _frontier_lines(rows: list[FrontierRow], unit: str) -> list[str]:
    lines = ["## Frontier: each vector's shift at exactly each perplexity budget", "",
             "Interpolated along the vector's own alpha path on log-inflation, from the unsteered model (never "
             "extrapolated: a budget beyond its largest measured inflation is 'not reached'). Intervals: percentile "
             f"bootstrap resampling questions and perplexity {unit}s together, the interpolation redone in each "
             "resample (so they include where the budget falls). The primary figure is the paired difference "
             "from the dense vector at the same budget; the fraction of dense is given where the dense shift's "
             "interval excludes zero. 'defined': the share of resamples that reach the budget (the intervals are "
             "over those).", ""]
    reached = [r for r in rows if r.reached and not is_control(r.method)]
    if reached:
        up = sum(r.ci_low > 0 for r in reached)
        down = sum(r.ci_high < 0 for r in reached)
        q = [r for r in reached if r.q_value < ALPHA_LEVEL]
        lines += [f"Shifts at the budgets: {up + down} of {len(reached)} have an interval excluding zero "
                  f"({len(reached)} x {ALPHA_LEVEL:g} = {len(reached) * ALPHA_LEVEL:.2g} expected with no effect at "
                  f"all): {up} up, {down} down; {len(q)} at q < {ALPHA_LEVEL:g} (Benjamini-Hochberg; "
                  f"{sum(r.shift > 0 for r in q)} up, {sum(r.shift < 0 for r in q)} down).", ""]
    beyond = [r for r in reached if not math.isnan(r.minus_random)]
    if beyond:
        q = [r for r in beyond if r.minus_random_q_value < ALPHA_LEVEL]
        lines += [f"Beyond the random control of the same k: {len(q)} of {len(beyond)} at q < {ALPHA_LEVEL:g} "
                  f"({sum(r.minus_random > 0 for r in q)} more than random, {sum(r.minus_random < 0 for r in q)} "
                  "less); the others are what any push of that size does.", ""]
    cells = []
    for row in rows:
        if not row.reached:
            cells.append([str(row.layer), f"{row.method} {row.k}", f"{row.budget:g}", "not reached", "", "", "", "",
                          "", ""])
            continue
        cells.append([str(row.layer), f"{row.method} {row.k}", f"{row.budget:g}", _fmt(row.alpha, ".3g"),
                      _ci(row.shift, row.ci_low, row.ci_high), _fmt(row.q_value, ".2g"), _fmt(row.boot_defined, ".2f"),
                      _ci(row.diff_vs_dense, row.diff_ci_low, row.diff_ci_high) if row.reference
                      else ("(reference)" if parse_k(row.k) is None else "no dense vector measured"),
                      _ci(row.fraction, row.fraction_ci_low, row.fraction_ci_high)
                      if not math.isnan(row.fraction) else "",
                      _ci(row.minus_random, row.minus_random_ci_low, row.minus_random_ci_high)
                      if not math.isnan(row.minus_random) else ""])
    return lines + _md_table(["layer", "vector", "budget", "alpha", "shift [95% CI]", "q", "defined",
                              "minus dense [95% CI]", "fraction of dense [95% CI]", "minus random [95% CI]"],
                             cells) + [""]


def _steerability_lines(rows: list[SteerabilityRow], alpha_mode: str) -> list[str]:
    if not rows:
        return []
    unit = {"fraction": "per unit of residual-norm fraction", "norm": "per unit of added norm",
            "scale": "per unit of scale"}[alpha_mode]
    lines = ["## Per-question steerability", "",
             f"Each question's least-squares slope of its primary measure over alpha ({unit}; the unsteered model "
             "at alpha 0), as steering-bench reports it (Tan et al. 2024): the mean slope (t over questions), the "
             "spread of the slopes (sd) and the anti-steerable share (questions whose slope is negative), the last "
             "two with bootstrap intervals over questions. A mean shift hides a vector that moves half the "
             "questions the wrong way; the spread and the share show it.", ""]
    return lines + _md_table(["layer", "vector", "questions", "mean slope [95% CI]", "sd of slopes [95% CI]",
                              "anti-steerable [95% CI]"],
                             [[str(r.layer), f"{r.method} {r.k}", str(r.n_questions),
                               _ci(r.slope_mean, r.slope_ci_low, r.slope_ci_high),
                               _ci(r.slope_sd, r.slope_sd_ci_low, r.slope_sd_ci_high),
                               _ci(r.anti_steerable, r.anti_ci_low, r.anti_ci_high, ".2f")] for r in rows]) + [""]


def _write_rows(rows, record_type, path: Path) -> None:
    import pandas as pd

    replace_file(path, pd.DataFrame([as_record(r) for r in rows], columns=columns(record_type)).to_csv(index=False))


def write_report(ledger, budgets, family: list[Contrast] | None = None, analysis: Analysis | None = None) -> Path:
    """frontier.csv, contrasts.csv, steerability.csv, results.md and the plots in the ledger's folder.
    ``family``: the pre-specified primary contrasts (default
    :func:`~actstore.evaluation.frontier.default_contrasts`); ``analysis``: the margin of the
    contrasts' non-inferiority and equivalence tests and the bootstrap's resamples
    (:class:`~actstore.evaluation.intervals.Analysis`; a request's is ``SweepRequest.analysis``)."""
    analysis = analysis or Analysis()
    out_dir = Path(ledger.out_dir)
    results = ledger.results()
    if not len(results):
        return out_dir
    items, windows = ledger.items(), ledger.windows()
    evidence = Evidence.from_tables(results, items, windows)
    paths = Paths.of(evidence, analysis.resamples)
    table = frontier(paths, budgets)
    primary = contrasts(paths, budgets, family, margin=analysis.margin)
    prompting = prompt_contrasts(results, items, margin=analysis.margin)
    steer_rows = steerability(evidence.results, items, n_resamples=analysis.resamples)
    _write_rows(table, FrontierRow, out_dir / "frontier.csv")
    _write_rows(primary + prompting, ContrastRow, out_dir / "contrasts.csv")
    _write_rows(steer_rows, SteerabilityRow, out_dir / "steerability.csv")
    lines = _header_lines(ledger, results, evidence.unit)
    lines += [f"**Test set.** {analysis.test_note}", ""] if analysis.test_note else []
    lines += ["## How many configurations move the behavior", ""] + _count_lines(results) + [""]
    lines += _scale_lines(results)
    lines += _frontier_lines(table, evidence.unit)
    lines += contrast_lines(primary, family is not None, analysis)
    lines += _selection_lines(results, items, prompting, ledger.settings)
    lines += _steerability_lines(steer_rows, ledger.baseline["settings"]["alpha_mode"])
    lines += _kl_lines(results)
    lines += _degeneration_lines(results)
    lines += _separation_lines(ledger.separation(), out_dir)
    lines += _cost_lines(results)
    for behavior in sorted({v[0] for v in paths.index}):  # a sweep of the prompting baseline alone has no path
        name = f"frontier_{behavior}.png"
        plot_frontier(paths, behavior, budgets, out_dir / name)
        lines += [f"![{behavior} frontier]({name})", ""]
    path = out_dir / "results.md"
    replace_file(path, "\n".join(lines))
    return path


def _header_lines(ledger, results, unit: str) -> list[str]:
    """The title and what the sweep measured: protocol, questions, perplexity text, alpha, baseline."""
    settings = ledger.baseline["settings"]
    questions = settings.get("questions", settings["items"])
    seeds = sorted({m.split(":", 1)[1] for m in results["method"].unique() if str(m).startswith("random:")}, key=int)
    orders = " (each in both answer orders)" if settings["items"] == 2 * questions else ""
    what = "prompts" if str(settings["protocol"]).startswith("generation") else "held-out questions"
    return ["# Steering sweep", "", *_judge_lines(ledger),
            f"Protocol {settings['protocol']!r} on {questions} {what}{orders}; perplexity on "
            f"{settings['ppl_tokens']} tokens from {settings.get('ppl_documents', 1)} document(s) in "
            f"{settings.get('ppl_window', 256)}-token windows; alpha is "
            + {"fraction": "the added norm as a fraction of the layer's residual norm",
               "norm": "the added norm", "scale": "the scale of each vector"}[settings["alpha_mode"]]
            + (f"; steered positions: {settings['positions']}" if "positions" in settings else "")
            + (f"; random-control seeds {', '.join(seeds)}" if seeds else "")
            + (f"; KL damage on the unsteered model's greedy continuations ({settings['kl_tokens']} tokens) of "
               f"{settings['kl_prompts']} prompts" if "kl_tokens" in settings else "")
            + f". Unsteered: on-target {ledger.baseline['on_target']:.4g}, perplexity {ledger.baseline['ppl']:.4g}. "
            f"Every interval is 95%: shifts paired over questions (t), inflation paired over perplexity "
            f"{unit}s (bootstrap).", ""]


def _judge_lines(ledger) -> list[str]:
    """A judged sweep: what the run recorded of its judge (judge.txt: the validation summary, or the
    sentence that it was not validated, with the caveat of a small judge); nothing otherwise."""
    if "judge" not in ledger.settings:
        return []
    path = Path(ledger.out_dir) / JUDGE_NOTE
    note = path.read_text(encoding="utf-8").strip() if path.is_file() else None
    if note is None:  # a folder whose judge.txt was lost: say so rather than nothing
        from .judges import judge_note

        note = judge_note(None, ledger.settings["judge"])
    return [f"**Judge.** {note}", ""]


def _selection_lines(results, items, prompting: list[ContrastRow], settings: dict) -> list[str]:
    """The selected alphas (``select_split``) and the prompting baseline against them."""
    has_prompt = results["method"].map(is_prompt).any()
    if "select_split" not in settings and not has_prompt:
        return []
    lines = ["## Selected alphas and the prompting baseline", ""]
    if "select_split" not in settings:
        return lines + ["No --select-split: no alpha is selected, so the prompting baseline is not compared with "
                        "the vectors (an alpha chosen on the prompts it is reported on would flatter them). Its row "
                        "is in results.csv (method prompt).", ""]
    share = settings["select_split"]
    lines += [f"Each vector's alpha is chosen on the 'select' prompts ({share:g} of them, by a hash of each prompt's "
              "text) by the highest mean score, and reported on the other, 'report', prompts: mean score with a t "
              "interval over those prompts (items.csv: prompt_id, split). The prompting baseline has no alpha; its "
              "perplexity inflation is read with the instruction before each window.", ""]
    chosen = results[results["selected"].astype(bool)].sort_values(["layer", "method", "k"], kind="stable")
    scores = report_intervals(chosen, items)
    header = ["layer", "vector", "alpha", "score on report prompts [95% CI]", "perplexity inflation [95% CI]"]
    lines += _md_table(header, [["" if is_prompt(r["method"]) else str(r["layer"]), _vector(r),
                                 "" if is_prompt(r["method"]) else f"{r['alpha']:.4g}",
                                 _ci(score.estimate, score.low, score.high),
                                 _ci(r["ppl_inflation"], r["ppl_inflation_ci_low"], r["ppl_inflation_ci_high"], ".4g")]
                                for r, score in zip(chosen.to_dict("records"), scores)]) + [""]
    if prompting:
        lines += ["Prompt minus each selected vector, paired over the report prompts (t interval; Holm over these "
                  "rows, a family of their own; contrasts.csv, contrast prompt_minus_vector):", ""]
        lines += _md_table(["vector", "prompt minus vector [95% CI]", "p", "Holm p"],
                           [[r.reference, _ci(r.estimate, r.ci_low, r.ci_high), _fmt(r.p_value, ".2g"),
                             _fmt(r.p_holm, ".2g")] for r in prompting]) + [""]
    return lines


def _kl_lines(results) -> list[str]:
    """``damage`` kl: each configuration's KL damage beside its perplexity inflation."""
    if "kl_mean" not in results or not results["kl_mean"].notna().any():
        return []
    lines = ["## KL damage on the unsteered model's own continuations", "",
             "KL(unsteered || steered) in nats of the next-token distributions along the unsteered model's greedy "
             "continuations of the KL prompts: at the first generated token, and the mean over each continuation "
             "(up to its end of sequence); the mean over prompts with a t interval over prompts (kl.csv: per "
             "prompt). The unsteered model's is 0 by definition.", ""]
    rows = results.sort_values(["layer", "method", "k", "alpha"], kind="stable").to_dict("records")
    return lines + _md_table(
        ["layer", "vector", "alpha", "perplexity inflation [95% CI]", "KL first token [95% CI]",
         "KL mean [95% CI]"],
        [[str(r["layer"]), _vector(r), f"{r['alpha']:.4g}",
          _ci(r["ppl_inflation"], r["ppl_inflation_ci_low"], r["ppl_inflation_ci_high"], ".4g"),
          _ci(r["kl_first"], r["kl_first_ci_low"], r["kl_first_ci_high"]),
          _ci(r["kl_mean"], r["kl_mean_ci_low"], r["kl_mean_ci_high"])] for r in rows]) + [""]


def _degeneration_lines(results) -> list[str]:
    """Generation sweeps: the shifts of distinct-2 and of the repeated 3-gram rate."""
    if "distinct_2_shift" not in results or not results["distinct_2_shift"].notna().any():
        return []
    return ["## Degeneration of the generations (paired over prompts)", ""] + _md_table(
        ["layer", "vector", "alpha", "distinct-2 shift [95% CI]", "repeated 3-gram rate shift [95% CI]"],
        [[str(r["layer"]), _vector(r), f"{r['alpha']:.4g}",
          _ci(r["distinct_2_shift"], r["distinct_2_ci_low"], r["distinct_2_ci_high"]),
          _ci(r["repeated_3gram_shift"], r["repeated_3gram_ci_low"], r["repeated_3gram_ci_high"])]
         for r in results.to_dict("records")]) + [""]


def _separation_lines(separation, out_dir: Path) -> list[str]:
    """separation.csv as a table, and its plot per behavior (drawn here)."""
    if separation is None or not len(separation):
        return []
    lines = ["## Separation of held-out pairs (no generation)", "",
             "Projections h.v/|v| of the held-out pos and neg texts onto each vector at its layer: AUROC "
             "(0.5 is chance) and Cohen's d, 95% bootstrap intervals over pairs.", ""]
    lines += _md_table(["layer", "method", "k", "AUROC [95% CI]", "Cohen's d [95% CI]", "n pos + neg"],
                       [[str(r["layer"]), str(r["method"]), str(r["k"]),
                         _ci(r["auroc"], r["auroc_ci_low"], r["auroc_ci_high"]),
                         _ci(r["cohens_d"], r["d_ci_low"], r["d_ci_high"]),
                         f"{int(r['n_pos'])} + {int(r['n_neg'])}"]
                        for r in separation.sort_values(["layer", "method", "k"], kind="stable")
                        .to_dict("records")]) + [""]
    for behavior in separation["behavior"].unique():
        plot_separation(separation[separation["behavior"] == behavior], out_dir / f"separation_{behavior}.png")
    return lines


def _cost_lines(results) -> list[str]:
    seconds = results["seconds"].to_numpy(dtype=float)
    return ["## Cost", "",
            f"{len(results)} configurations, median {np.median(seconds):.3g} s each "
            f"({3600 / np.mean(seconds):.0f} configurations per hour at the mean, {seconds.sum():.0f} s in all; "
            "the first configuration at each layer includes computing that layer's cached block outputs).", ""]


__all__ = ["count_line", "write_report"]
