"""The KL damage in a sweep (``damage=("ppl", "kl")``): results.csv's KL columns recomputed from
kl.csv, kl.csv against ``kl_damage`` under ``steer(...)`` directly, a kill mid-kl.csv resumed to
the same folder, a configuration short of its kl.csv rows measured again, the prompts' reader and
its refusals before any model loads, and the CLI's flags."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import actstore
from actstore.errors import ActstoreError
from actstore.evaluation.damage import (
    DEFAULT_KL_PROMPTS,
    continuations,
    format_prompts,
    kl_damage,
    read_kl_prompts,
)
from actstore.evaluation.ledger import Ledger
from actstore.evaluation.request import SweepRequest
from actstore.evaluation.rows import KL_COLUMNS
from actstore.evaluation.sweep import COLUMNS
from actstore.vectors.controls import random_control
from tests.contracts.test_sweep_killpoints import Killed, failing_at, table

from .test_sweep import ITEMS, _cli_world, sweep

KL_PROMPTS = ["Name three colours of the rainbow.", "Write a short poem about rain.", "What is two plus two?",
              "Describe a cat", "Give me a recipe for bread."]
KL_TOKENS = 6
KL_FIELDS = ["kl_first", "kl_first_ci_low", "kl_first_ci_high", "kl_mean", "kl_mean_ci_low", "kl_mean_ci_high"]


@pytest.fixture
def kl_file(tmp_path) -> Path:
    path = tmp_path / "kl-prompts.json"
    path.write_text(json.dumps([{"instruction": p, "category": None} for p in KL_PROMPTS]))
    return path


def kl_sweep(llama, store, out, ppl_ids, kl_file, **fields):
    """The tests' sweep (test_sweep.sweep) with the KL damage on :data:`KL_PROMPTS`, A/B items as written."""
    defaults = {"damage": ("ppl", "kl"), "kl_prompts": kl_file, "kl_tokens": KL_TOKENS, "both_orders": False,
                "items": ITEMS[:6], "layers": (2,)}
    return sweep(llama, store, out, ppl_ids, **{**defaults, **fields})


def _t(values) -> tuple[float, float, float]:
    """Mean and 95% t interval over prompts, written out."""
    n = len(values)
    mean = sum(values) / n
    half = scipy_stats.t.ppf(0.975, n - 1) * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return mean, mean - half, mean + half


def _rows_of(frame, row):
    return frame[(frame["layer"] == row.layer) & (frame["method"] == row.method) & (frame["k"] == row.k)
                 & (frame["alpha"] == row.alpha)].sort_values("prompt_id")


def _direct(llama, vector, scale: float, kl_file: Path):
    """kl_damage on the same prompts, the whole model under steer(...), outside any sweep."""
    batches = continuations(llama, format_prompts(llama.tokenizer, read_kl_prompts(kl_file)), KL_TOKENS, 8)
    return kl_damage(llama, batches, lambda: actstore.steer(llama, vector, scale))


def test_kl_columns_recompute_from_kl_csv_which_equals_kl_damage_under_steer(tmp_path, llama, store, ppl_ids,
                                                                             kl_file):
    out = tmp_path / "kl"
    results = kl_sweep(llama, store, out, ppl_ids, kl_file, ks=(4, None), fractions=(0.5, 2.0),
                       methods=("enr", "random"))
    assert list(results.columns) == COLUMNS and len(results) == 2 * 2 * 2
    kl = pd.read_csv(out / "kl.csv", dtype={"k": str, "method": str})
    assert list(kl.columns) == KL_COLUMNS
    base = kl[kl["method"] == "none"]
    assert base["prompt_id"].tolist() == list(range(len(KL_PROMPTS)))
    assert (base[["kl_first", "kl"]] == 0).all().all()  # 0 by definition, written so
    for row in results.itertuples():
        mine = _rows_of(kl, row)
        assert mine["prompt_id"].tolist() == list(range(len(KL_PROMPTS))), row
        for column, values in (("kl_first", mine["kl_first"]), ("kl_mean", mine["kl"])):
            want = _t(values.tolist())
            got = (getattr(row, column), getattr(row, f"{column}_ci_low"), getattr(row, f"{column}_ci_high"))
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (row, column)
        assert (mine["kl"] > 0).all() and (mine["kl_first"] > 0).all()
    # One vector and one control, against kl_damage under steer(...) on the whole model (the sweep
    # replays layer 2's cached outputs for everything else).
    stats = actstore.open_stats(store)
    vector = actstore.vectors.build.vector_from_stats(stats, 2, 4)
    for method, steered in (("enr", vector), ("random:0", random_control(vector, 0))):
        row = results[(results["method"] == method) & (results["k"] == "4") & (results["alpha"] == 2.0)].iloc[0]
        direct = _direct(llama, steered, row["scale"], kl_file)
        mine = _rows_of(kl, row)
        np.testing.assert_allclose(mine["kl_first"].to_numpy(), direct.kl_first, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(mine["kl"].to_numpy(), direct.kl, rtol=1e-6, atol=1e-9)
    settings = json.loads((out / "baseline.json").read_text())["settings"]
    assert settings["damage"] == "ppl,kl" and settings["kl_prompts"] == len(KL_PROMPTS)
    assert settings["kl_tokens"] == KL_TOKENS
    report = (out / "results.md").read_text()
    assert "KL damage on the unsteered model's own continuations" in report and "KL first token" in report
    assert f"({KL_TOKENS} tokens) of {len(KL_PROMPTS)} prompts" in report


def test_without_kl_the_columns_are_nan_and_there_is_no_kl_csv(tmp_path, llama, store, ppl_ids):
    results = sweep(llama, store, tmp_path / "ppl", ppl_ids, layers=[2], ks=[4], alphas=[2.0], both_orders=False)
    assert results[KL_FIELDS].isna().all().all()
    assert not (tmp_path / "ppl" / "kl.csv").exists()
    assert "KL damage" not in (tmp_path / "ppl" / "results.md").read_text()
    assert "damage" not in json.loads((tmp_path / "ppl" / "baseline.json").read_text())["settings"]


def _recorded(monkeypatch) -> list:
    """The configurations the ledger records from now on (the baseline as "baseline")."""
    recorded = []
    record, record_baseline = Ledger.record, Ledger.record_baseline
    monkeypatch.setattr(Ledger, "record", lambda self, row, items, *a, **k: recorded.append(items.key.as_tuple())
                        or record(self, row, items, *a, **k))
    monkeypatch.setattr(Ledger, "record_baseline", lambda self, *a, **k: recorded.append("baseline")
                        or record_baseline(self, *a, **k))
    return recorded


def _assert_same_tables(out: Path, reference: Path, point: str) -> None:
    for name in ("results.csv", "items.csv", "windows.csv", "kl.csv", "frontier.csv", "steerability.csv"):
        pd.testing.assert_frame_equal(table(out / name), table(reference / name), check_exact=True, obj=point)


def test_a_sweep_killed_in_or_after_a_kl_csv_write_resumes_to_the_same_folder(tmp_path, llama, store, ppl_ids,
                                                                              kl_file, monkeypatch):
    fields = dict(ks=(4,), alphas=(4.0, 8.0))
    reference = tmp_path / "reference"
    with failing_at(0) as seen:
        kl_sweep(llama, store, reference, ppl_ids, kl_file, **fields)
    writes = [n for n, name in enumerate(seen["files"], 1) if name == "kl.csv"]
    assert len(writes) == 3 and all(seen["appends"][n - 1] for n in writes)  # the baseline's and two configurations'
    for n in sorted({*writes, *(n + 1 for n in writes)}):  # half of kl.csv's rows, or the write after them
        out = tmp_path / f"kill{n}"
        point = f"killed at write {n} ({seen['files'][n - 1]})"
        with pytest.raises(Killed), failing_at(n):
            kl_sweep(llama, store, out, ppl_ids, kl_file, **fields)
        kl_sweep(llama, store, out, ppl_ids, kl_file, **fields)
        _assert_same_tables(out, reference, point)
    # A configuration done whose kl.csv rows were lost is measured again, and only it.
    out = tmp_path / "short"
    shutil.copytree(reference, out)
    lines = (out / "kl.csv").read_bytes().splitlines(keepends=True)
    (out / "kl.csv").write_bytes(b"".join(lines[:-2]))  # the last configuration's last two prompts
    recorded = _recorded(monkeypatch)
    kl_sweep(llama, store, out, ppl_ids, kl_file, **fields)
    assert recorded == [(2, "enr", "4", 8.0)]
    _assert_same_tables(out, reference, "kl.csv short of a configuration's rows")


def test_a_bad_kl_prompts_file_is_refused_before_the_model_loads(tmp_path, store, monkeypatch):
    from actstore.evaluation.sweep import run_sweep
    from actstore.models.load import ModelSpec

    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail("the model loaded before the check"))
    text = tmp_path / "text.txt"
    text.write_text("Some text. " * 50)
    (tmp_path / "t.json").write_text(json.dumps([{"positive": "a (A)", "negative": "a (B)"}]))
    for name, content, message in (("fields.json", json.dumps([{"instruction": "a"}, {"text": "b"}]), "item 2"),
                                   ("broken.json", '["a", ', "not valid JSON"),
                                   ("blank.txt", "\n \n", "holds no prompts"),
                                   ("lines.jsonl", '{"prompt": "a"}\n{"prompt": ""}\n', "line 2"),
                                   ("missing.json", None, "does not exist")):
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        request = SweepRequest(store=store, out=tmp_path / "out", layers=(1,), ks=(4,), data_test=tmp_path / "t.json",
                               text=text, damage="ppl,kl", kl_prompts=path)
        with pytest.raises(ActstoreError, match=message) as refused:
            run_sweep(ModelSpec(str(tmp_path / "no-model")), request)
        assert name in str(refused.value) and refused.value.params == ("kl_prompts",), name


def test_the_damage_fields_are_checked_when_the_request_is_made(tmp_path):
    def request(**fields):
        return SweepRequest(store="s.zarr", out=tmp_path / "o", layers="1", data_test="t.json", **fields)

    assert request().damage == ("ppl",) and request(damage="ppl, kl").damage == ("ppl", "kl")
    assert request(damage=["kl", "ppl"]).measures_kl and not request().measures_kl
    for fields, params, message in (({"damage": "kl"}, ("damage",), "ppl is required"),
                                    ({"damage": "ppl,kld"}, ("damage",), "expected a comma list of ppl, kl"),
                                    ({"damage": ""}, ("damage",), "expected a comma list"),
                                    ({"kl_prompts": "p.json"}, ("kl_prompts", "damage"), "add kl to damage"),
                                    ({"damage": "ppl,kl", "kl_tokens": 0}, ("kl_tokens",), "integer >= 1")):
        with pytest.raises(ActstoreError, match=message) as refused:
            request(**fields)
        assert refused.value.params == params, fields


def test_the_prompts_reader_takes_every_documented_form(tmp_path, llama):
    forms = {"strings.json": json.dumps(KL_PROMPTS), "prompts.jsonl": "".join(json.dumps({"prompt": p}) + "\n"
                                                                              for p in KL_PROMPTS),
             "lines.txt": "\n".join(KL_PROMPTS) + "\n\n", "mixed.json": json.dumps(
                 [{"instruction": p} if i % 2 else {"prompt": p} for i, p in enumerate(KL_PROMPTS)])}
    for name, content in forms.items():
        (tmp_path / name).write_text(content)
        assert read_kl_prompts(tmp_path / name) == KL_PROMPTS, name
    # raw: with the BOS the tokenizer adds itself (continuations tokenize without special tokens)
    assert format_prompts(llama.tokenizer, ["Hi"]) == ["<bos>Hi"]
    chat = llama.tokenizer.__class__.from_pretrained(llama.model.name_or_path)
    chat.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert format_prompts(chat, ["Hi"]) == ["<|user|>Hi<|assistant|>"]


def test_the_default_prompts_are_the_first_hundred_harmless_instructions(shared_data, monkeypatch, tmp_path):
    import actstore.evaluation.damage as damage

    monkeypatch.chdir(tmp_path)  # found from any folder
    instructions = [r["instruction"] for r in json.loads(
        (shared_data / "refusal-direction" / "harmless_val.json").read_text())]
    assert read_kl_prompts() == instructions[:DEFAULT_KL_PROMPTS] and DEFAULT_KL_PROMPTS == 100
    monkeypatch.setattr(damage, "_SHARED_KL_PROMPTS", tmp_path / "nowhere" / "harmless_val.json")
    with pytest.raises(ActstoreError, match="no KL prompts given and none found") as missing:
        read_kl_prompts()
    assert missing.value.params == ("kl_prompts",)


def test_the_cli_flags_reach_the_request_and_the_folder(tmp_path, tiny_model_dirs, pairs_file, kl_file):
    from actstore.cli.evaluate import evaluate

    assert {"damage", "kl_prompts", "kl_tokens"} <= {p.name for p in evaluate.params}
    invoke, common = _cli_world(tmp_path, tiny_model_dirs, pairs_file)
    args = [*common, "--layers", "1", "--k", "4", "--fractions", "0.5", "--no-separation", "--damage", "ppl,kl",
            "--kl-prompts", str(kl_file), "--kl-tokens", "5"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "sweep"
    settings = json.loads((out / "baseline.json").read_text())["settings"]
    assert (settings["damage"], settings["kl_prompts"], settings["kl_tokens"]) == ("ppl,kl", len(KL_PROMPTS), 5)
    results = pd.read_csv(out / "results.csv")
    assert results[KL_FIELDS].notna().all().all() and len(pd.read_csv(out / "kl.csv")) == 2 * len(KL_PROMPTS)
    refused = invoke([*args[:-6], "--damage", "kl"])
    assert refused.exit_code == 1 and "--damage 'kl': ppl is required" in refused.output, refused.output
    refused = invoke([*args[:-6], "--kl-prompts", str(kl_file)])
    assert refused.exit_code == 1 and "--kl-prompts is for the KL measure: add kl to --damage" in refused.output
    assert "Traceback" not in refused.output
