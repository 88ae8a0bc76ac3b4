"""Judged generation in the sweep, AxBench's selection split and the prompting baseline: the split follows
each prompt's text, a factor chosen on one half is reported on the other, the prompt's damage is read on
the same windows after its instruction, and a judged sweep with the prompting baseline on a tiny model."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from actstore.errors import ActstoreError
from actstore.evaluation.judges import Ratings
from actstore.evaluation.replay import plain_forward
from actstore.evaluation.request import DEFAULT_PROMPT_TEMPLATE, SweepRequest
from actstore.evaluation.scoring import PerplexityWindows
from actstore.evaluation.selection import PromptSplit, prompt_contrasts, selected
from actstore.evaluation.sweep import run_sweep
from actstore.inputs.chat import ChatFormat

from .test_sweep import _cli_world

PROMPTS = [f"Tell me about thing number {i}, please." for i in range(12)]


class WordJudge:
    """A judge with the real interface whose ratings follow the response's words (deterministic)."""

    name = "words"

    def __init__(self):
        self.calls = []

    def rate(self, instructions, responses, concept):
        self.calls.append((list(instructions), list(responses), concept))
        words = np.array([len(r.split()) for r in responses], dtype=np.float64)
        letters = np.array([len(r) for r in responses], dtype=np.float64)
        return Ratings(concept=np.clip((letters % 7) / 3, 0, 2), instruction=np.full(len(responses), 1.5),
                       fluency=np.clip(0.2 + words / 5, 0, 2))


def _write_prompts(tmp_path, prompts=PROMPTS):
    path = tmp_path / "golden" / "prompts.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(prompts) + "\n")
    return path


def _request(tmp_path, store, ppl_ids, llama, out="sweep", **fields) -> SweepRequest:
    defaults = {"layers": (2,), "ks": (4,), "fractions": (0.5, 4.0), "max_new_tokens": 4, "progress": False,
                "prompts": _write_prompts(tmp_path), "separation": False,
                "perplexity": PerplexityWindows(llama.tokenizer, ppl_ids, 32)}
    return SweepRequest(store=store, out=tmp_path / out, **{**defaults, **fields})


# --- the split and the selection, on tables ---------------------------------------------------------------


def test_a_prompts_split_follows_its_text_not_its_position():
    split = PromptSplit.of(PROMPTS, 0.5)
    backwards = PromptSplit.of(PROMPTS[::-1], 0.5)
    assert dict(zip(split.prompt_ids, split.labels)) == dict(zip(backwards.prompt_ids, backwards.labels))
    assert split.prompt_ids[0] == hashlib.sha256(PROMPTS[0].encode()).hexdigest()[:12]
    assert set(split.labels) == {"select", "report"}
    assert PromptSplit.of(PROMPTS).labels == ("report",) * len(PROMPTS)  # without a split: all reported
    with pytest.raises(ActstoreError, match="no prompt of the 1 in the") as err:
        PromptSplit.of(PROMPTS[:1], 0.5)
    assert "select_split" in err.value.params


def _tables(select_scores: dict, report_scores: dict):
    """results and items of one vector at alphas 1 and 2 and the prompting baseline; ``*_scores``: alpha ->
    the harmonic score of every select / report prompt."""
    configs = [(2, "enr", "4", 1.0), (2, "enr", "4", 2.0), (-1, "prompt", "none", 0.0)]
    results = pd.DataFrame([{"behavior": "b", "layer": c[0], "method": c[1], "k": c[2], "alpha": c[3],
                             "measure": "score", "selected": False} for c in configs])
    rows = []
    for layer, method, k, alpha in configs:
        for item, half in enumerate(["select"] * 3 + ["report"] * 3):
            value = (select_scores if half == "select" else report_scores).get(alpha, 1.0) + 0.1 * item
            rows.append({"layer": layer, "method": method, "k": k, "alpha": alpha, "item": f"prompt {item}",
                         "question": item, "order": 0, "prompt_id": f"{item:012x}", "split": half, "score": value,
                         "harmonic": value})
    return results, pd.DataFrame(rows)


def test_a_factor_chosen_on_the_select_prompts_is_never_chosen_by_the_report_ones():
    results, items = _tables({1.0: 0.5, 2.0: 1.5}, {1.0: 1.0, 2.0: 1.0})
    chosen = selected(results, items)
    assert chosen.tolist() == [False, True, True]  # alpha 2 wins on the select half; the prompt has no factor
    # the report half made to favour alpha 1 by far: the choice does not move
    results, items = _tables({1.0: 0.5, 2.0: 1.5}, {1.0: 1.9, 2.0: 0.0})
    assert selected(results, items).tolist() == [False, True, True]
    # the select half does decide it
    results, items = _tables({1.0: 1.5, 2.0: 0.5}, {1.0: 0.0, 2.0: 1.9})
    assert selected(results, items).tolist() == [True, False, True]
    # without a select half nothing is selected
    assert not selected(results, items.assign(split="report")).any()


def test_the_prompt_contrast_is_paired_over_the_report_prompts_only():
    results, items = _tables({1.0: 0.5, 2.0: 1.5}, {1.0: 1.0, 2.0: 0.4})
    items.loc[(items["method"] == "prompt") & (items["split"] == "report"), "harmonic"] = [1.2, 1.0, 1.7]
    items.loc[(items["method"] == "prompt") & (items["split"] == "select"), "harmonic"] = 99.0  # never read
    results["selected"] = selected(results, items)
    [row] = prompt_contrasts(results, items)
    diffs = np.array([1.2, 1.0, 1.7]) - (0.4 + 0.1 * np.arange(3, 6))
    t = scipy_stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert (row.estimate, row.ci_low, row.ci_high) == pytest.approx((diffs.mean(), diffs.mean() - t,
                                                                      diffs.mean() + t))
    assert row.p_value == pytest.approx(scipy_stats.ttest_1samp(diffs, 0).pvalue)
    assert (row.contrast, row.method, row.layer, row.measure) == ("prompt_minus_vector", "prompt", 2, "harmonic")
    assert "alpha 2 (selected)" in row.reference and math.isnan(row.budget) and row.p_holm == pytest.approx(row.p_value)


# --- the request's rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, param", [
    ({"data_test": "t.json", "judge": "axbench", "concept": "c"}, "judge"),
    ({"prompts": "p.txt", "select_split": 1.0}, "select_split"),
    ({"prompts": "p.txt", "select_split": 0.0}, "select_split"),
    ({"prompts": "p.txt", "methods": "enr,prompt"}, "concept"),
    ({"prompts": "p.txt", "judge": "axbench"}, "concept"),
    ({"prompts": "p.txt", "judge": "gpt-judge", "concept": "c"}, "judge"),
    ({"prompts": "p.txt", "judge_model": "m"}, "judge_model"),
    ({"prompts": "p.txt", "methods": "prompt", "concept": "c", "prompt_template": "no slot"}, "prompt_template"),
    ({"data_test": "t.json", "methods": "enr,prompt", "concept": "c"}, "methods"),
    ({"data_test": "t.json", "chat_template": True}, "chat_template"),
    ({"data_test": "t.json", "system": "Be brief."}, "system"),
])
def test_judged_and_prompting_settings_are_refused_at_the_door(fields, param):
    with pytest.raises(ActstoreError) as err:
        SweepRequest(store="s.zarr", out="o", layers="1", **fields)
    assert param in err.value.params


def test_the_judges_validation_is_read_before_any_model_and_a_broken_one_named(tmp_path):
    from actstore.evaluation.intervals import Interval
    from actstore.evaluation.judges import JudgeValidation

    validation = JudgeValidation("words", "bridges", Interval(0.8, 0.7, 0.9), Interval(0.6, 0.5, 0.7),
                                 ("positive", "negative", "hard negative"), (2.0, 0.0, 1.0))
    good = tmp_path / "v.csv.json"
    good.write_text(validation.to_json())
    request = SweepRequest(store="s.zarr", out="o", layers="1", prompts="p.txt", judge="axbench", concept="c",
                           judge_validation=good)
    assert validation.summary() in request.judge_note()
    unvalidated = SweepRequest(store="s.zarr", out="o", layers="1", prompts="p.txt", judge="axbench", concept="c")
    assert "was not validated" in unvalidated.judge_note()
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ActstoreError, match="broken.json") as err:
        SweepRequest(store="s.zarr", out="o", layers="1", prompts="p.txt", judge="axbench", concept="c",
                     judge_validation=broken).judge_note()
    assert err.value.params == ("judge_validation",)


# --- formatting and the prompt's damage, on the tiny model ------------------------------------------------


TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_generation_prompts_go_through_one_chat_format_and_the_instruction_is_its_system_prompt(llama, monkeypatch):
    from actstore.evaluation import protocols

    seen = []

    def spy(model, tokenizer, prompts, max_new_tokens=40, add_special_tokens=True):
        seen.append((list(prompts), add_special_tokens))
        return ["x"] * len(prompts)

    monkeypatch.setattr(protocols, "generate", spy)
    monkeypatch.setattr(llama.tokenizer, "chat_template", TEMPLATE, raising=False)
    chat = ChatFormat(True, "Be brief.")
    generation = protocols.GeneratedText(PROMPTS[:2], "vader", chat=chat)
    generation.continuations(llama)
    assert seen[-1] == ([chat.prompt_text(llama.tokenizer, p) for p in PROMPTS[:2]], False)
    generation.instructed("Mention bridges.").continuations(llama)
    assert seen[-1][0][0] == "<system>Be brief.\n\nMention bridges.</system><user>" + PROMPTS[0] + "</user><assistant>"
    plain = protocols.GeneratedText(PROMPTS[:1], "vader").instructed("Mention bridges.")
    plain.continuations(llama)
    assert seen[-1] == (["Mention bridges.\n\n" + PROMPTS[0]], True)  # without a template: a paragraph before it


def test_a_prefixed_window_counts_only_the_documents_tokens_each_read_after_the_prefix(llama, ppl_ids):
    import torch

    windows = PerplexityWindows(llama.tokenizer, ppl_ids[:64], 32)
    prefixed = windows.prefixed("Mention bridges.\n\n")
    nll, tokens = prefixed.nll(plain_forward(llama.model))
    base_nll, base_tokens = windows.nll(plain_forward(llama.model))
    assert tokens.tolist() == base_tokens.tolist()
    prefix = llama.tokenizer("Mention bridges.\n\n", add_special_tokens=False)["input_ids"]
    bos = [llama.tokenizer.bos_token_id] if llama.tokenizer.bos_token_id is not None else []
    for index, window in enumerate((ppl_ids[:32], ppl_ids[32:64])):
        ids = torch.tensor([bos + prefix + list(window)])
        with torch.no_grad():
            logprobs = torch.log_softmax(llama.model(ids).logits[0].double(), -1)
        first = len(bos) + len(prefix)  # the window's first token's position
        expected = -sum(float(logprobs[p - 1, ids[0, p]]) for p in range(first + (0 if bos else 1), ids.shape[1]))
        assert nll[index] == pytest.approx(expected, rel=1e-4)
        assert nll[index] != pytest.approx(base_nll[index], rel=1e-6)  # the prefix is read


# --- a judged sweep with the prompting baseline -----------------------------------------------------------


def test_a_judged_sweep_selects_on_one_half_and_reports_the_prompting_baseline_on_the_other(
        tmp_path, llama, store, ppl_ids):
    judge = WordJudge()
    kl_prompts = tmp_path / "kl.txt"
    kl_prompts.write_text("Say hello.\nName a colour.\n")
    request = _request(tmp_path, store, ppl_ids, llama, methods="enr,prompt", judge=judge, concept="bridges",
                       select_split=0.5, damage="ppl,kl", kl_prompts=kl_prompts, kl_tokens=3)
    results = run_sweep(llama, request)
    out = request.out
    items = pd.read_csv(out / "items.csv", dtype={"k": str, "prompt_id": str})
    windows = pd.read_csv(out / "windows.csv", dtype={"k": str})
    # every call rated the prompts as written, for the concept
    assert all(call[0] == PROMPTS and call[2] == "bridges" for call in judge.calls) and len(judge.calls) == 4
    # items.csv: the prompt's id and half, the three ratings and their harmonic mean, which is the score
    split = PromptSplit.of(PROMPTS, 0.5)
    base = items[items["method"] == "none"]
    assert base["prompt_id"].tolist() == list(split.prompt_ids) and base["split"].tolist() == list(split.labels)
    assert {"concept_rating", "instruction_rating", "fluency_rating", "harmonic"} <= set(items.columns)
    assert np.allclose(items["score"], items["harmonic"])
    # the prompting baseline: one row, no layer, k or factor; perplexity after its instruction; no KL
    prompt = results[results["method"] == "prompt"].iloc[0]
    assert (prompt["layer"], prompt["k"], prompt["alpha"]) == (-1, "none", 0.0) and math.isnan(prompt["scale"])
    assert math.isnan(prompt["kl_mean"]) and results[results["method"] == "enr"]["kl_mean"].notna().all()
    mine, unsteered = windows[windows["method"] == "prompt"], windows[windows["method"] == "none"]
    assert mine["tokens"].tolist() == unsteered["tokens"].tolist()
    instruction = DEFAULT_PROMPT_TEMPLATE.replace("{concept}", "bridges")
    expected, _ = request.perplexity.prefixed(instruction + "\n\n").nll(plain_forward(llama.model))
    assert mine["nll"].to_numpy() == pytest.approx(expected, rel=1e-5)
    assert prompt["ppl_inflation"] == pytest.approx(
        math.exp((mine["nll"].sum() - unsteered["nll"].sum()) / unsteered["tokens"].sum()), rel=1e-6)
    # selection: the alpha with the best mean harmonic over the select prompts; figures over the report ones
    vector = results[results["method"] == "enr"]
    select_means = {a: items[(items["alpha"] == a) & (items["method"] == "enr") & (items["split"] == "select")]
                    ["harmonic"].mean() for a in vector["alpha"]}
    assert vector[vector["selected"]]["alpha"].tolist() == [max(select_means, key=select_means.get)]
    assert bool(prompt["selected"])
    for row in results.itertuples():
        values = items[(items["method"] == row.method) & (items["alpha"] == row.alpha) & (items["split"] == "report")]
        mean = values["harmonic"].mean()
        half = scipy_stats.t.ppf(0.975, len(values) - 1) * values["harmonic"].std(ddof=1) / math.sqrt(len(values))
        assert (row.harmonic, row.harmonic_ci_low, row.harmonic_ci_high) == pytest.approx(
            (mean, mean - half, mean + half))
    contrasts = pd.read_csv(out / "contrasts.csv", dtype={"k": str})
    mine = contrasts[contrasts["contrast"] == "prompt_minus_vector"]
    assert len(mine) == 1 and mine["layer"].tolist() == [2] and mine["measure"].tolist() == ["harmonic"]
    report_md = (out / "results.md").read_text()
    assert "was not validated" in report_md and "orderings and paired differences" in report_md
    assert "Selected alphas and the prompting baseline" in report_md
    assert json.loads((out / "baseline.json").read_text())["settings"]["judge"] == "words"
    # a rerun resumes: nothing is measured again (the prompt's missing KL rows are no damage)
    again = run_sweep(llama, request)
    assert len(judge.calls) == 4 and len(pd.read_csv(out / "items.csv")) == len(items)
    assert again["selected"].tolist() == results["selected"].tolist()


def test_cli_eval_runs_the_prompting_baseline_with_a_split_and_refuses_what_cannot_run(tmp_path, tiny_model_dirs,
                                                                                    pairs_file):
    invoke, common = _cli_world(tmp_path, tiny_model_dirs, pairs_file)
    data_test, prompts = common.index("--data-test"), _write_prompts(tmp_path)

    def generation(out):
        return [*common[:data_test], "--prompts", str(prompts), *common[data_test + 2:-2], "--out", str(tmp_path / out),
                "--layers", "1", "--k", "4", "--fractions", "0.5,2", "--max-new-tokens", "3", "--no-separation"]

    result = invoke([*generation("sweep"), "--methods", "enr,prompt", "--concept", "bridges", "--select-split", "0.5",
                     "--prompt-template", "Talk about {concept}."])
    assert result.exit_code == 0, result.output
    out = tmp_path / "sweep"
    results = pd.read_csv(out / "results.csv", dtype={"k": str})
    assert sorted(results["method"]) == ["enr", "enr", "prompt"] and results["selected"].sum() == 2
    contrasts = pd.read_csv(out / "contrasts.csv", dtype={"k": str})
    assert (contrasts["contrast"] == "prompt_minus_vector").sum() == 1
    assert json.loads((out / "baseline.json").read_text())["settings"]["prompt_template"] == "Talk about {concept}."
    for args, code, message in ((["--select-split", "1.5"], 2, "--select-split"),
                                (["--methods", "prompt"], 1, "--concept"),
                                (["--judge-model", "m"], 1, "--judge"),
                                (["--chat-template"], 1, "chat template")):
        result = invoke([*generation("refused"), *args])
        assert result.exit_code == code and message in result.output and "Traceback" not in result.output, \
            (args, result.output)
    result = invoke([*common, "--layers", "1", "--judge", "axbench", "--concept", "c"])
    assert result.exit_code == 1 and "--prompts" in result.output, result.output


def test_the_settings_of_a_judged_folder_refuse_a_rerun_with_another_judge_or_split(tmp_path, llama, store, ppl_ids):
    request = _request(tmp_path, store, ppl_ids, llama, fractions=(0.5,), judge=WordJudge(), concept="bridges",
                       select_split=0.5)
    run_sweep(llama, request)
    for change in ({"select_split": 0.4}, {"concept": "rivers"}):
        with pytest.raises(ActstoreError, match="another setting"):
            run_sweep(llama, _request(tmp_path, store, ppl_ids, llama, fractions=(0.5,), judge=WordJudge(),
                                      **{"concept": "bridges", "select_split": 0.5, **change}))

def test_the_prompting_baseline_alone_is_one_row_off_every_alpha_path(tmp_path, llama, store, ppl_ids):
    results = run_sweep(llama, _request(tmp_path, store, ppl_ids, llama, methods="prompt", concept="bridges"))
    assert results[["layer", "method", "k", "alpha"]].values.tolist() == [[-1, "prompt", "none", 0.0]]
    assert not results["selected"].any()  # no split: nothing selected, and no contrast with a vector
    frontier = pd.read_csv(tmp_path / "sweep" / "frontier.csv")
    steerability = pd.read_csv(tmp_path / "sweep" / "steerability.csv")
    assert len(frontier) == 0 and len(steerability) == 0
    assert "no alpha is selected" in (tmp_path / "sweep" / "results.md").read_text()
