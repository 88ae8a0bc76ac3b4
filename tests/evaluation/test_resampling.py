"""Replicate sweeps on resampled training sets combined into intervals that include the vectors' noise:
synthetic tables whose answer is written out, the rules, and two half sweeps of the tiny llama."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from actstore.errors import ActstoreError
from actstore.evaluation.frontier import contrasts
from actstore.evaluation.paths import Evidence, Paths
from actstore.evaluation.request import SweepRequest
from actstore.evaluation.resampling import (
    Replicate,
    _check_settings,
    check_train_resample,
    combine,
    combine_tables,
    replicate_scale,
)

BUDGET = math.exp(0.25)  # log-inflation 0.25: between the paths' alpha 2 (0.2) and alpha 3 (0.3) points
ALPHAS = (1.0, 2.0, 3.0)
SLOPES = {"4": 1.0, "dense": 2.0}  # on-target shift per unit alpha; both vectors cost 0.1 nats/token per alpha


def tables(offset: float = 0.0, noise: float = 0.0, seed: int = 0, questions: int = 30, documents: int = 8,
           folder: str = "r", spec: str | None = "bootstrap:0") -> Replicate:
    """A sweep's tables, written out: shift of (enr, k) at alpha a on question q = a * slope (+ ``offset``
    for k=4 at every alpha: another vector) (+ ``noise``); each document's nll grows by 0.1 a per token."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=questions)
    items = [{"layer": np.nan, "method": "none", "k": "none", "alpha": 0.0, "item": f"i{q}", "question": q,
              "score": base[q]} for q in range(questions)]
    windows = [{"layer": np.nan, "method": "none", "k": "none", "alpha": 0.0, "window": u, "document": u,
                "nll": 300.0, "tokens": 100} for u in range(documents)]
    results = []
    for k, slope in SLOPES.items():
        for a in ALPHAS:
            key = {"layer": 1, "method": "enr", "k": k, "alpha": a}
            results.append({"behavior": "toy", **key, "measure": "score"})
            shift = a * slope + (offset if k == "4" else 0.0) + noise * rng.normal(size=questions)
            items += [{**key, "item": f"i{q}", "question": q, "score": base[q] + shift[q]} for q in range(questions)]
            nll = 300.0 + 100 * 0.1 * a + noise * rng.normal(size=documents)
            windows += [{**key, "window": u, "document": u, "nll": nll[u], "tokens": 100} for u in range(documents)]
    settings = {"protocol": "toy"} | ({} if spec is None else {"train_resample": spec})
    return Replicate(folder, settings, pd.DataFrame(results), pd.DataFrame(items), pd.DataFrame(windows))


def own_contrast(replicate: Replicate):
    """The replicate's own (fixed-vector) contrast row, as its sweep's report computes it."""
    paths = Paths.of(Evidence.from_tables(replicate.results, replicate.items, replicate.windows))
    (row,) = contrasts(paths, (BUDGET,))
    return row


@pytest.mark.parametrize("scale", [1.0, 1 / math.sqrt(2)])
def test_replicates_differing_by_a_shift_give_the_written_out_interval(scale):
    # No test noise: the fixed-vector interval is a point; the widened one is the replicates' spread times c.
    offsets = (-0.3, 0.0, 0.6)
    reps = [tables(offset=o, folder=f"r{i}", spec=f"bootstrap:{i}") for i, o in enumerate(offsets)]
    (row,) = combine_tables(reps, scale, budgets=(BUDGET,)).contrasts.itertuples(index=False)
    assert row.contrast == "sparse_minus_dense"
    mean = np.mean(offsets)
    centre = 2.5 * SLOPES["4"] - 2.5 * SLOPES["dense"] + mean  # shifts read at alpha 2.5
    assert row.estimate == pytest.approx(centre, abs=1e-9)
    assert (row.fixed_ci_low, row.fixed_ci_high) == pytest.approx((centre, centre), abs=1e-9)
    assert (row.ci_low, row.ci_high) == pytest.approx((centre + scale * (min(offsets) - mean),
                                                       centre + scale * (max(offsets) - mean)), abs=1e-9)
    assert (row.replicates_min, row.replicates_max) == pytest.approx((centre - mean + min(offsets),
                                                                      centre - mean + max(offsets)), abs=1e-9)


@pytest.mark.parametrize("with_fixed", [False, True])
def test_identical_replicates_give_the_fixed_vector_interval(with_fixed):
    one = tables(noise=0.5, seed=3)
    reps = [Replicate(f"r{i}", {"train_resample": f"bootstrap:{i}"}, one.results, one.items, one.windows)
            for i in range(3)]
    fixed = Replicate("full", {}, one.results, one.items, one.windows) if with_fixed else None
    combined = combine_tables(reps, 1.0, fixed, budgets=(BUDGET,))
    (row,) = combined.contrasts.itertuples(index=False)
    own = own_contrast(one)
    assert (row.estimate, row.ci_low, row.ci_high) == pytest.approx((own.estimate, own.ci_low, own.ci_high), abs=1e-12)
    assert (row.fixed_ci_low, row.fixed_ci_high) == pytest.approx((own.ci_low, own.ci_high), abs=1e-12)
    assert row.width_ratio == pytest.approx(1.0)
    frontier = combined.frontier.set_index("k")
    assert frontier.loc["4", "width_ratio"] == pytest.approx(1.0)
    assert frontier.loc["4", "diff_width_ratio"] == pytest.approx(1.0)


def test_with_test_noise_the_widened_interval_covers_the_replicates_and_is_centred_on_the_fixed_vectors():
    offsets = (-0.4, -0.1, 0.2, 0.5)
    reps = [tables(offset=o, noise=0.3, seed=10 + i, folder=f"r{i}") for i, o in enumerate(offsets)]
    full = tables(offset=0.05, noise=0.3, seed=99, folder="full", spec=None)
    (row,) = combine_tables(reps, 1.0, budgets=(BUDGET,)).contrasts.itertuples(index=False)
    assert row.ci_low < row.replicates_min and row.ci_high > row.replicates_max
    assert row.width_ratio > 1.5
    (centred,) = combine_tables(reps, 1.0, full, budgets=(BUDGET,)).contrasts.itertuples(index=False)
    own = own_contrast(full)
    assert centred.estimate == pytest.approx(own.estimate, abs=1e-12)
    assert (centred.fixed_ci_low, centred.fixed_ci_high) == pytest.approx((own.ci_low, own.ci_high), abs=1e-12)
    assert centred.ci_high - centred.ci_low > own.ci_high - own.ci_low


def test_replicates_must_share_test_items_and_windows():
    reps = [tables(folder="a"), tables(folder="b", questions=29)]
    with pytest.raises(ActstoreError, match="other test items"):
        combine_tables(reps, 1.0, budgets=(BUDGET,))


def test_the_replicates_scale_and_the_settings_rules():
    assert replicate_scale(["bootstrap:0", "bootstrap:1"]) == 1.0
    assert replicate_scale(["half:1/4", "half:2/4", "half:3/4"]) == pytest.approx(0.5)
    for specs, match in ((["half:1/2"], "at least two"), (["bootstrap:1", "bootstrap:1"], "given twice"),
                         (["half:1/2", "half:1/3"], "different resamples"), (["half:1/2", "bootstrap:0"], "different")):
        with pytest.raises(ActstoreError, match=match):
            replicate_scale(specs)
    a, b = tables(folder="a"), tables(folder="b", spec="bootstrap:1")
    assert _check_settings([a, b], tables(folder="full", spec=None)) == ["bootstrap:0", "bootstrap:1"]
    with pytest.raises(ActstoreError, match="not measured with train_resample"):
        _check_settings([a, tables(folder="plain", spec=None)], None)
    with pytest.raises(ActstoreError, match="fixed is the sweep of every training pair"):
        _check_settings([a, b], tables(folder="c", spec="bootstrap:2"))
    other = Replicate("o", {"protocol": "other", "train_resample": "bootstrap:3"}, a.results, a.items, a.windows)
    with pytest.raises(ActstoreError, match="other settings"):
        _check_settings([a, other], None)


def test_a_request_writes_its_spec_one_way_and_refuses_methods_that_read_rows():
    assert check_train_resample(None, ("enr",)) is None
    assert check_train_resample(" half:1/2:0", ("enr", "random")) == "half:1/2"
    request = SweepRequest(store="s.zarr", data_test="t.json", layers="1", out="o", methods="enr,random",
                           train_resample="bootstrap:7")
    assert request.train_resample == "bootstrap:7"
    # whitened and lda read the rows through a covariance, which the resample weighs (stats/covariance.py)
    assert SweepRequest(store="s.zarr", data_test="t.json", layers="1", out="o", methods="enr,whitened,lda",
                        train_resample="half:1/2").train_resample == "half:1/2"
    with pytest.raises(ActstoreError, match=r"\['pca', 'probe'\] read the store's rows") as err:
        SweepRequest(store="s.zarr", data_test="t.json", layers="1", out="o", methods="enr,whitened,pca,probe",
                     train_resample="half:1/2")
    assert err.value.params == ("train_resample", "methods")
    with pytest.raises(ActstoreError, match="expected bootstrap:SEED") as err:
        SweepRequest(store="s.zarr", data_test="t.json", layers="1", out="o", train_resample="halves")
    assert err.value.params == ("train_resample",)


def test_two_half_sweeps_of_the_tiny_llama_combine(tmp_path, llama, store, ppl_ids):
    from .test_sweep import documents, sweep

    windows = documents(llama, ppl_ids)
    folders = [tmp_path / "h1", tmp_path / "h2"]
    for part, folder in enumerate(folders, 1):
        sweep(llama, store, folder, ppl_ids, perplexity=windows, layers=(2,), methods="enr,random",
              fractions=(0.5, 1.0, 2.0, 4.0), budgets=(1.01, 1.02), train_resample=f"half:{part}/2")
        settings = json.loads((folder / "baseline.json").read_text())["settings"]
        assert settings["train_resample"] == f"half:{part}/2"
    first, second = (pd.read_csv(f / "results.csv") for f in folders)
    assert not np.allclose(first["vector_norm"], second["vector_norm"])  # each half its own vectors
    with pytest.raises(ActstoreError, match="another setting"):  # a folder resumes only its own resample
        sweep(llama, store, folders[0], ppl_ids, perplexity=windows, layers=(2,), methods="enr,random",
              fractions=(0.5, 1.0, 2.0, 4.0), train_resample="half:2/2")
    combined = combine(folders, budgets=(1.01, 1.02))  # the tiny model's inflation stays under 1.04
    assert combined.scale == pytest.approx(1 / math.sqrt(2))
    reached = combined.contrasts.dropna(subset=["ci_low"])
    assert len(reached)
    for row in reached.itertuples(index=False):
        # Wider than the same path's fixed-vector interval (the same test draws, c = 0). Not necessarily wider
        # than each folder's own: a half's vectors reach a budget at their own alpha, where the test noise is
        # their own (here, at 1.01, wider than the first half's own interval and narrower than the second's).
        assert row.ci_high - row.ci_low > row.fixed_ci_high - row.fixed_ci_low
        assert row.ci_low <= row.replicates_min and row.ci_high >= row.replicates_max
    path = combined.write(tmp_path / "combined")
    assert "width ratio" in path.read_text()
    assert (tmp_path / "combined" / "resampled_contrasts.csv").exists()


def test_whitened_vectors_of_two_halves_differ_and_neither_is_the_full_sets(tmp_path, llama, store, ppl_ids):
    from .test_sweep import documents, sweep

    windows = documents(llama, ppl_ids)
    norms = {}
    for spec in ("half:1/2", "half:2/2", None):
        folder = tmp_path / str(spec).replace(":", "-").replace("/", "-")
        sweep(llama, store, folder, ppl_ids, perplexity=windows, layers=(2,), methods="whitened", fractions=(1.0,),
              budgets=(1.01,), train_resample=spec)
        results = pd.read_csv(folder / "results.csv")
        norms[spec] = results.loc[results["method"] == "whitened"].sort_values("k")["vector_norm"].to_numpy()
    assert len(norms[None]) and not np.allclose(norms["half:1/2"], norms["half:2/2"])
    assert not np.allclose(norms["half:1/2"], norms[None]) and not np.allclose(norms["half:2/2"], norms[None])


def test_cli_eval_refuses_a_bad_resample_before_the_model_loads(tmp_path, run, pairs_file):
    common = ["eval", "--model", str(tmp_path / "no-model"), "--store", str(tmp_path / "no.zarr"), "--data-test",
              str(pairs_file), "--layers", "1", "--out", str(tmp_path / "out")]
    for args, message in ((["--train-resample", "half:3/2"], "--train-resample 'half:3/2': I/N needs"),
                          (["--methods", "enr,pca", "--train-resample", "half:1/2"],
                           "methods ['pca'] read the store's")):
        result = run(*common, *args)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
