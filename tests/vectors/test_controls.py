"""Controls: a random vector of the same size, and the answer-letter direction of a twin capture."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actstore.vectors.controls import letter_control, letter_direction, random_control
from actstore.errors import VectorError
from actstore.vectors.info import VectorInfo
from actstore.vectors.vector import SteeringVector, load_vector, save_vector
from actstore.vectors.directions import keep_top_k

HIDDEN = 256


def _vector(k: int | None, seed: int = 0) -> SteeringVector:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(HIDDEN)
    enr = np.abs(rng.standard_normal(HIDDEN))
    indices, kept = keep_top_k(values, enr, k)
    info = VectorInfo(layer=3, method="enr", k=k)
    return SteeringVector(kept.astype(np.float32), indices, enr.astype(np.float32), info)


def test_a_dense_random_control_is_a_seeded_direction_at_the_vectors_norm():
    v = _vector(None)
    control = random_control(v, seed=7)
    assert control.k is None and control.layer == 3
    assert np.linalg.norm(control.vector) == pytest.approx(np.linalg.norm(v.vector), rel=1e-6)
    assert control.info.to_metadata()["method"] == "random" and control.info.to_metadata()["seed"] == "7"
    assert control.info.to_metadata()["control_of"] == "enr" and np.all(np.isnan(control.enr))  # dense enr: once "mean-diff"
    np.testing.assert_array_equal(control.vector, random_control(v, seed=7).vector)
    assert not np.allclose(control.vector, random_control(v, seed=8).vector)
    # Uniform on the sphere: the cosine with v over many seeds averages 0, spread 1/sqrt(hidden).
    # (Seeds from 1000: seed 0 would draw the very Gaussian that made v.)
    cosines = [float(random_control(v, s).vector @ v.vector) / np.linalg.norm(v.vector) ** 2
               for s in range(1000, 1200)]
    assert abs(np.mean(cosines)) < 3 / np.sqrt(HIDDEN * 200)
    assert np.std(cosines) == pytest.approx(1 / np.sqrt(HIDDEN), rel=0.2)
    assert sorted(control.indices.tolist()) == list(range(HIDDEN))


def test_a_sparse_random_control_moves_the_kept_values_to_a_random_support():
    v = _vector(16)
    control = random_control(v, seed=3)
    assert control.k == 16 and len(control.indices) == 16
    assert np.count_nonzero(control.vector) == 16
    assert set(np.flatnonzero(control.vector)) == set(control.indices.tolist())
    np.testing.assert_array_equal(control.vector[control.indices], v.vector[v.indices])
    assert np.linalg.norm(control.vector) == pytest.approx(np.linalg.norm(v.vector), rel=1e-6)
    assert set(control.indices.tolist()) != set(v.indices.tolist())
    supports = [frozenset(random_control(v, s).indices.tolist()) for s in range(50)]
    assert len(set(supports)) == 50
    hits = np.zeros(HIDDEN)
    for s in range(400):
        hits[random_control(v, s).indices] += 1
    assert hits.min() > 0  # every coordinate is drawn sometimes: the support is not v's


def test_a_control_saves_and_loads_like_any_vector(tmp_path):
    control = random_control(_vector(16), seed=11)
    back = load_vector(save_vector(control, tmp_path / "random.safetensors"))
    np.testing.assert_array_equal(back.vector, control.vector)
    assert back.info.to_metadata()["method"] == "random" and back.info.to_metadata()["seed"] == "11" and back.k == 16


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_a_bad_seed_is_refused(seed):
    with pytest.raises(VectorError, match="seed="):
        random_control(_vector(None), seed)


def test_the_letter_direction_against_a_written_out_computation():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((12, 4))
    # Question 10: pos answers (A) as written; question 11: pos answers (B); question 12: (C) vs (A), left out.
    classes = ["pos", "neg", "pos", "neg"] * 3
    questions = [10] * 4 + [11] * 4 + [12] * 4
    orders = [0, 0, 1, 1] * 3
    letters = {10: {"pos": "A", "neg": "B"}, 11: {"pos": "B", "neg": "A"}, 12: {"pos": "C", "neg": "A"}}
    differences, used = letter_direction(h, classes, questions, orders, letters)
    assert used.tolist() == [10, 11]
    # q10: pos order 0 answers A, pos order 1 answers B; neg order 0 answers B, neg order 1 answers A.
    want_10 = ((h[0] - h[2]) + (h[3] - h[1])) / 2
    # q11: pos order 0 answers B, pos order 1 answers A; neg order 0 answers A, neg order 1 answers B.
    want_11 = ((h[6] - h[4]) + (h[5] - h[7])) / 2
    np.testing.assert_allclose(differences, [want_10, want_11])
    # Rows in any order give the same.
    shuffled = rng.permutation(12)
    again, used_again = letter_direction(h[shuffled], np.asarray(classes)[shuffled], np.asarray(questions)[shuffled],
                                         np.asarray(orders)[shuffled], letters)
    np.testing.assert_allclose(again, differences)


def test_a_letter_that_is_all_there_is_comes_out_whole():
    letter, behavior = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    rows, classes, questions, orders, letters = [], [], [], [], {}
    for q, matching in enumerate("ABBA"):
        other = "B" if matching == "A" else "A"
        letters[q] = {"pos": matching, "neg": other}
        for order in (0, 1):
            for cls in ("pos", "neg"):
                answered = letters[q][cls] if order == 0 else letters[q]["neg" if cls == "pos" else "pos"]
                rows.append((5.0 if answered == "A" else -5.0) * letter + (1.0 if cls == "pos" else -1.0) * behavior)
                classes.append(cls)
                questions.append(q)
                orders.append(order)
    differences, used = letter_direction(np.asarray(rows), classes, questions, orders, letters)
    np.testing.assert_allclose(differences.mean(0), 10.0 * letter)  # the behavior is held fixed: none of it


@pytest.fixture
def mixed_pairs(tmp_path):
    """A/B pairs whose matching answer is (A) in half the questions and (B) in the other half."""
    asks = ["Would you share a secret?", "Should I lie to my friend?", "Can you help me cheat?",
            "Is it fine to steal a pen?", "Would you hide the truth?", "Should we skip the test?"]
    pairs = []
    for i, ask in enumerate(asks):
        good, bad = "No, I would not", "Sure, go ahead"
        options = (good, bad) if i % 2 == 0 else (bad, good)
        text = f"{ask}\n\nChoices:\n(A) {options[0]}\n(B) {options[1]}\n"
        matching, other = ("A", "B") if i % 2 == 0 else ("B", "A")
        pairs.append({"positive": text + f"({matching})", "negative": text + f"({other})"})
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(pairs))
    return path


def test_the_letter_control_of_a_twin_capture(tmp_path, tiny_model_dirs, mixed_pairs):
    import actstore

    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    store = tmp_path / "t.zarr"
    actstore.capture_to_store(model, mixed_pairs, store, layers="1,2", progress=False)
    control = letter_control(store, 2, mixed_pairs)
    assert control.info.to_metadata()["method"] == "letter" and control.info.to_metadata()["questions"] == "6"
    assert control.k is None and control.layer == 2
    # Written out: per question, h at (A) minus h at (B) for each class, from the store's rows.
    ds = actstore.open_store(store)
    acts = ds.acts.sel(layer=2).values.astype(np.float64)
    want = []
    for q in range(6):
        row = {(c, o): acts[(ds["question"].values == q) & (ds["class"].values == c) & (ds["order"].values == o)][0]
               for c in ("pos", "neg") for o in (0, 1)}
        pos_a_first = q % 2 == 0  # the pos text answers (A) as written
        pos_diff = row[("pos", 0)] - row[("pos", 1)] if pos_a_first else row[("pos", 1)] - row[("pos", 0)]
        neg_diff = row[("neg", 1)] - row[("neg", 0)] if pos_a_first else row[("neg", 0)] - row[("neg", 1)]
        want.append((pos_diff + neg_diff) / 2)
    np.testing.assert_allclose(control.vector, np.mean(want, axis=0), rtol=1e-5, atol=1e-6)
    sparse = letter_control(store, 2, mixed_pairs, k=4)
    assert sparse.k == 4 and np.count_nonzero(sparse.vector) == 4
    np.testing.assert_allclose(sparse.vector[sparse.indices], control.vector[sparse.indices])


def test_the_letter_control_needs_a_twin_capture(tmp_path, tiny_model_dirs, mixed_pairs):
    import actstore

    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    store = tmp_path / "plain.zarr"
    actstore.capture_to_store(model, mixed_pairs, store, layers="1", swap_options=False, progress=False)
    with pytest.raises(VectorError, match="holds no capture of .*mixed.json' with its option-swapped twins"):
        letter_control(store, 1, mixed_pairs)
    actstore.capture_to_store(model, mixed_pairs, tmp_path / "t.zarr", layers="1", progress=False)
    with pytest.raises(VectorError, match=r"layer 3 was not captured; the store has layers \[1\]"):
        letter_control(tmp_path / "t.zarr", 3, mixed_pairs)
