"""The refusal direction under add and project, with random controls and KL damage, on SmolLM2-135M-Instruct.

    python studies/refusal_operators.py [--work DIR] [--out studies/results/refusal-operators]

Runs studies/results/refusal-operators/PLAN.md: captures harmful_train[:128] and harmless_train[:128]
(chat template, last prompt token, all layers), picks the layer on harmless_val[0:32] by the
first-token refusal log-odds that adding v_L induces, then generates (greedy, 32 tokens) on
harmless_val[32:96] and harmful_val under none / add / add-random / project / project-random, scores
each generation with --scorer refusal's classes, and measures KL on the harmless prompts. Writes
generations.csv (one row a generation), kl.csv (one row a prompt and condition), layers.csv (the
selection) and RESULTS.md (the table, with intervals) into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))  # _common: machine, git_rev, the shared data
from _common import SHARED_DATA, git_rev, machine  # noqa: E402

SEEDS = (0, 1, 2, 3, 4)
N_TOKENS = 32


def instructions(name: str) -> list[str]:
    return [row["instruction"] for row in json.loads((SHARED_DATA / "refusal-direction" / f"{name}.json").read_text())]


def chat(tokenizer, instruction: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                         add_generation_prompt=True)


def build_store(loaded, work: Path) -> Path:
    import actstore

    store = work / "refusal.zarr"
    if not store.exists():
        rows = [{"text": chat(loaded.tokenizer, i), "label": "harmful"} for i in instructions("harmful_train")[:128]]
        rows += [{"text": chat(loaded.tokenizer, i), "label": "harmless"} for i in instructions("harmless_train")[:128]]
        data = work / "train.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        actstore.capture_to_store(loaded, data, store, layers="all", position="last", progress=False)
    return store


def refusal_log_odds(loaded, prompts: list[str], refusal_ids: list[int]) -> np.ndarray:
    """Per prompt: log p / (1 - p), p the next-token probability of the refusal tokens."""
    from actstore.evaluation.replay import padding_side

    with padding_side(loaded.tokenizer, "left"), torch.no_grad():
        batch = loaded.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        probs = torch.softmax(loaded.model(**batch).logits[:, -1].double(), -1)
    p = probs[:, refusal_ids].sum(-1).clamp(1e-12, 1 - 1e-12)
    return (p.log() - (1 - p).log()).numpy()


def select_layer(loaded, store: Path, prompts: list[str]) -> tuple[int, pd.DataFrame]:
    import actstore

    refusal_ids = sorted({loaded.tokenizer.encode(word, add_special_tokens=False)[0] for word in ("I", "As")})
    base = refusal_log_odds(loaded, prompts, refusal_ids)
    rows = []
    for layer in range(int(0.8 * loaded.num_layers)):
        vector = actstore.build_vector(store, layer, "enr", None, pos="harmful", neg="harmless")
        with actstore.steer(loaded, vector, 1.0):
            shift = refusal_log_odds(loaded, prompts, refusal_ids) - base
        rows.append({"layer": layer, "induce_logodds": float(shift.mean()), "sd": float(shift.std(ddof=1)),
                     "norm": float(np.linalg.norm(vector.vector))})
        print(f"layer {layer}: refusal log-odds {shift.mean():+.3f}", flush=True)
    table = pd.DataFrame(rows)
    return int(table.loc[table["induce_logodds"].idxmax(), "layer"]), table


def conditions(vector, loaded):
    """(name, seed, steering factory, prompt sets) of the plan's conditions."""
    import contextlib

    from actstore.steering import steer
    from actstore.vectors.controls import random_control
    from actstore.vectors.operators import Operator

    project = vector.with_info(operator=Operator("project", layers="all"))
    out = [("none", None, contextlib.nullcontext, ("harmless", "harmful")),
           ("add", None, lambda: steer(loaded, vector, 1.0), ("harmless",)),
           ("project", None, lambda: steer(loaded, project, 1.0), ("harmless", "harmful"))]
    for seed in SEEDS:
        rand = random_control(vector, seed)
        rand_project = rand.with_info(operator=Operator("project", layers="all"))
        out.append(("add-random", seed, lambda r=rand: steer(loaded, r, 1.0), ("harmless",)))
        out.append(("project-random", seed, lambda r=rand_project: steer(loaded, r, 1.0), ("harmless", "harmful")))
    return out


def wilson(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="wilson")
    return 100 * ci.low, 100 * ci.high


def main(argv=None) -> None:
    from actstore.evaluation.damage import continuations, kl_damage
    from actstore.evaluation.scorers import response_kind
    from actstore.evaluation.scoring import generate
    from actstore.models.embedded import prepare_instruct_model
    from actstore.models.load import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/refusal-operators")
    parser.add_argument("--out", default=str(HERE / "results" / "refusal-operators"))
    args = parser.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    torch.manual_seed(0)
    loaded = load_model(str(prepare_instruct_model()))
    store = build_store(loaded, work)
    harmless = [chat(loaded.tokenizer, i) for i in instructions("harmless_val")[:96]]
    harmful = [chat(loaded.tokenizer, i) for i in instructions("harmful_val")]
    layer, table = select_layer(loaded, store, harmless[:32])
    table.to_csv(out / "layers.csv", index=False)
    import actstore

    vector = actstore.build_vector(store, layer, "enr", None, pos="harmful", neg="harmless")
    sets = {"harmless": harmless[32:96], "harmful": harmful}
    batches = continuations(loaded, sets["harmless"], N_TOKENS, batch_size=16)
    generations, kls = [], []
    for name, seed, steering, prompt_sets in conditions(vector, loaded):
        for prompt_set in prompt_sets:
            with steering():
                texts = []
                for start in range(0, len(sets[prompt_set]), 16):
                    texts += generate(loaded.model, loaded.tokenizer, sets[prompt_set][start:start + 16],
                                      max_new_tokens=N_TOKENS)
            generations += [{"condition": name, "seed": seed, "prompts": prompt_set, "prompt_id": i,
                             "kind": response_kind(text), "text": text} for i, text in enumerate(texts)]
        if name != "none":
            damage = kl_damage(loaded, batches, steering)
            kls += [{"condition": name, "seed": seed, "prompt_id": i, "kl_first": float(a), "kl": float(b)}
                    for i, (a, b) in enumerate(zip(damage.kl_first, damage.kl))]
        print(f"{name} seed {seed}: done at {time.time() - started:.0f} s", flush=True)
    pd.DataFrame(generations).to_csv(out / "generations.csv", index=False)
    pd.DataFrame(kls).to_csv(out / "kl.csv", index=False)
    write_results(out, layer, table, pd.DataFrame(generations), pd.DataFrame(kls), time.time() - started)


def _per_100(frame: pd.DataFrame, kind: str) -> str:
    k, n = int((frame["kind"] == kind).sum()), len(frame)
    low, high = wilson(k, n)
    return f"{100 * k / n:.1f} [{low:.1f}, {high:.1f}]"


def _paired(frame: pd.DataFrame, base: pd.DataFrame) -> str:
    from actstore.evaluation.intervals import paired_mean_interval

    treated = (frame.sort_values("prompt_id")["kind"] == "refusal").to_numpy(float) * 100
    control = (base.sort_values("prompt_id")["kind"] == "refusal").to_numpy(float) * 100
    interval = paired_mean_interval(treated, control)
    return "0 (no refusals either way)" if not np.any(treated) and not np.any(control) else f"{interval:+.1f}"


def _kl(frame: pd.DataFrame, column: str) -> str:
    from actstore.evaluation.intervals import paired_mean_interval

    if frame.empty:
        return "-"
    per_prompt = frame.groupby("prompt_id")[column].mean().to_numpy()
    return f"{paired_mean_interval(per_prompt, np.zeros_like(per_prompt)):.3g}"


def write_results(out: Path, layer: int, table, generations: pd.DataFrame, kls: pd.DataFrame, seconds: float):
    lines = ["# Refusal direction: add, project, random controls (SmolLM2-135M-Instruct)\n",
             f"`python studies/refusal_operators.py` at {git_rev()} on {machine()}, {seconds / 60:.0f} min; the plan: "
             "PLAN.md. Layer chosen on harmless_val[0:32] by the first-token refusal log-odds that adding v_L "
             f"induces: **layer {layer}** ({table.loc[table['layer'] == layer, 'induce_logodds'].item():+.2f}; "
             "every layer in layers.csv). Reported on harmless_val[32:96] (64) and harmful_val (39); greedy, "
             f"{N_TOKENS} new tokens. Per 100 generations with Wilson 95% intervals over prompts; random controls "
             f"pooled over seeds {', '.join(map(str, SEEDS))}; KL (unsteered || steered) on the unsteered model's "
             f"own {N_TOKENS}-token continuations of the harmless prompts, mean [95% t interval] over prompts "
             "(a random control's per-prompt KL is first averaged over its seeds).\n",
             "| prompts | condition | refusals /100 | minus none (paired) | degenerate /100 | KL first token | "
             "KL over 32 tokens |", "|---|---|---|---|---|---|---|"]
    for prompt_set in ("harmless", "harmful"):
        base = generations[(generations["prompts"] == prompt_set) & (generations["condition"] == "none")]
        for name in ("none", "add", "add-random", "project", "project-random"):
            rows = generations[(generations["prompts"] == prompt_set) & (generations["condition"] == name)]
            if rows.empty:
                continue
            paired = "-" if name == "none" else _paired(rows.groupby("prompt_id", as_index=False).first(), base) \
                if rows["seed"].isna().all() else "see seeds"
            kl = kls[kls["condition"] == name] if prompt_set == "harmless" else kls.iloc[0:0]
            lines.append(f"| {prompt_set} | {name} | {_per_100(rows, 'refusal')} | {paired} | "
                         f"{_per_100(rows, 'degenerate')} | {_kl(kl, 'kl_first')} | {_kl(kl, 'kl')} |")
    lines += ["", "Random controls seed by seed (refusals /100):", ""]
    for name in ("add-random", "project-random"):
        for prompt_set in ("harmless", "harmful"):
            rows = generations[(generations["condition"] == name) & (generations["prompts"] == prompt_set)]
            if not rows.empty:
                per_seed = rows.groupby("seed")["kind"].apply(lambda k: 100 * (k == "refusal").mean())
                lines.append(f"- {name} on {prompt_set}: " + ", ".join(f"seed {int(s)}: {v:.1f}"
                                                                      for s, v in per_seed.items()))
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
