"""The paired bootstrap (evaluate/paired.py) on constructed cases, and the per-product outcomes the
scoring keeps for it (evaluate/protocol.py evaluate_on_split ``per_product``)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from scalemm.evaluate.paired import paired_bootstrap, paired_steps, pooled

TASKS = ("coarse", "fine", "classification")


def _outcomes(rng: np.random.Generator, n: int, p: float, nan_every: int = 0) -> dict[str, np.ndarray]:
    out = {}
    for t in TASKS:
        v = (rng.random(n) < p).astype(float)
        if nan_every:
            v[::nan_every] = np.nan  # products not scored by this task (e.g. no second listing)
        out[t] = v
    return out


def test_identical_methods_give_zero_and_an_interval_around_it() -> None:
    rng = np.random.default_rng(0)
    seeds = [_outcomes(rng, 200, 0.6, nan_every=3) for _ in range(3)]
    got = paired_bootstrap({"scale": seeds, "copy": [dict(s) for s in seeds]}, n_boot=1000)
    for t in TASKS:
        c = got["copy"][t]
        assert c["diff"] == 0.0 and c["lo"] <= 0.0 <= c["hi"]
        assert c["lo"] == 0.0 and c["hi"] == 0.0  # paired: the same products cancel exactly


def test_a_method_that_wins_on_every_query_has_its_lower_bound_above_zero() -> None:
    rng = np.random.default_rng(1)
    base = [_outcomes(rng, 150, 0.5) for _ in range(2)]
    win = [{t: np.ones(150) for t in TASKS} for _ in range(2)]
    got = paired_bootstrap({"scale": win, "base": base}, n_boot=1000)
    for t in TASKS:
        c = got["base"][t]
        assert c["diff"] == pytest.approx(1 - np.mean([b[t] for b in base]))
        assert 0 < c["lo"] <= c["diff"] <= c["hi"] < 1
    # and the other way round: every interval below zero
    rev = paired_bootstrap({"scale": base, "win": win}, n_boot=200)
    assert all(rev["win"][t]["hi"] < 0 for t in TASKS)


def test_the_interval_matches_the_normal_approximation_and_pools_the_seeds() -> None:
    rng = np.random.default_rng(2)
    n = 400
    a = [{t: (rng.random(n) < 0.7).astype(float) for t in TASKS} for _ in range(2)]
    b = [{t: (rng.random(n) < 0.6).astype(float) for t in TASKS} for _ in range(2)]
    got = paired_bootstrap({"scale": a, "b": b}, n_boot=1000, seed=3)
    for t in TASKS:
        d = pooled(a, t) - pooled(b, t)  # per product, seeds averaged: the figure is its mean
        se = d.std() / np.sqrt(n)
        c = got["b"][t]
        assert c["diff"] == pytest.approx(d.mean())
        assert c["lo"] == pytest.approx(d.mean() - 1.96 * se, abs=0.6 * se)
        assert c["hi"] == pytest.approx(d.mean() + 1.96 * se, abs=0.6 * se)
    assert got == paired_bootstrap({"scale": a, "b": b}, n_boot=1000, seed=3)  # seeded


def test_only_the_scored_products_count_and_the_seeds_must_agree_on_them() -> None:
    n = 100
    a = {t: np.ones(n) for t in TASKS}
    b = {t: np.zeros(n) for t in TASKS}
    a["fine"][50:] = b["fine"][50:] = np.nan
    got = paired_bootstrap({"scale": [a], "b": [b]}, n_boot=100)
    assert got["b"]["fine"] == {"diff": 1.0, "lo": 1.0, "hi": 1.0}
    bad = {t: v.copy() for t, v in a.items()}
    bad["coarse"][0] = np.nan
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap({"scale": [a, bad], "b": [b, b]}, n_boot=10)


def test_a_thousand_resamples_of_a_few_hundred_products_are_cheap() -> None:
    rng = np.random.default_rng(4)
    methods = {f"m{j}": [_outcomes(rng, 500, 0.5) for _ in range(3)] for j in range(15)}
    methods["scale"] = [_outcomes(rng, 500, 0.6) for _ in range(3)]
    t0 = time.perf_counter()
    got = paired_bootstrap(methods, n_boot=1000)
    assert time.perf_counter() - t0 < 10 and len(got) == 15


@pytest.mark.parametrize("sampled", [False, True])
def test_per_product_outcomes_average_to_the_reported_figures(sampled: bool) -> None:
    from scalemm.evaluate.budget import EvalBudget, Samples
    from scalemm.evaluate.embeddings import EmbeddingSet
    from scalemm.evaluate.protocol import SplitView, evaluate_on_split
    from scalemm.splits import SplitSpec

    rng = np.random.default_rng(5)
    n = 240
    inst = np.repeat(np.arange(n // 2), 2)
    cls = inst % 6
    lat = rng.normal(size=(6, 16))[cls] * 1.5 + rng.normal(size=(n // 2, 16))[inst] + rng.normal(size=(n, 16)) * 0.8
    labels = [f"c{c}" for c in cls]
    labels[5] = ""  # an unlabelled product: no coarse query, not in the probe
    es = EmbeddingSet([f"p{i}" for i in range(n)], lat.astype(np.float32), labels, [f"i{j}" for j in inst])
    names = np.array(["train", "train", "train", "val", "test"])[inst * 3 % 5]  # by instance
    view = SplitView(SplitSpec(0), names, "test", np.flatnonzero(names == "train"), np.flatnonzero(names == "test"))
    samples = None
    if sampled:
        drawn = Samples.draw(view.eval_rows, view.train_rows, EvalBudget(max_queries=30, max_sample=40), 0)
        samples = drawn.within(drawn.workset)
        es = es.subset(drawn.workset)
    per: dict[str, np.ndarray] = {}
    res = evaluate_on_split(es, view, 0, samples=samples, per_product=per)
    n_eval = len(view.eval_rows)
    assert set(per) == set(TASKS) and all(len(v) == n_eval for v in per.values())
    assert per["coarse"][~np.isnan(per["coarse"])].mean() == pytest.approx(res["coarse"]["mAP@1"])
    assert per["fine"][~np.isnan(per["fine"])].mean() == pytest.approx(res["fine"]["mAP@1"])
    assert per["classification"][~np.isnan(per["classification"])].mean() == pytest.approx(
        res["classification"]["accuracy"])
    if sampled:
        assert (~np.isnan(per["coarse"])).sum() <= 30 and (~np.isnan(per["classification"])).sum() == 40


def test_each_step_is_paired_with_the_one_before_it() -> None:
    """The ablation's steps: each subset minus the previous one present, on the same products; a
    step that adds nothing gets an interval of exactly 0, one that wins every query one above 0."""
    rng = np.random.default_rng(5)
    a = [{t: (rng.random(120) < 0.5).astype(float) for t in ("coarse", "fine")} for _ in range(2)]
    b = [dict(s) for s in a]  # adds nothing
    c = [{t: np.ones(120) for t in ("coarse", "fine")} for _ in range(2)]  # right on every query
    got = paired_steps({"a": a, "b": b, "c": c}, ["a", "x", "b", "c"], n_boot=500)
    assert list(got) == ["b", "c"]  # "x" has no outcomes: b is paired with a
    for t in ("coarse", "fine"):
        assert got["b"][t] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
        want = 1.0 - pooled(b, t).mean()
        assert got["c"][t]["diff"] == pytest.approx(want) and 0 < got["c"][t]["lo"] <= want <= got["c"][t]["hi"]


def test_spearman_is_nan_without_a_warning_where_a_sequence_is_constant() -> None:
    """The importances' rank correlation with the frozen modalities' scores: defined where both
    vary; where one is constant (a tiny evaluation where every modality scores alike) it is NaN,
    and scipy's warning is not printed."""
    import math
    import warnings

    from scalemm.evaluate.protocol import spearman

    assert spearman([0.1, 0.5, 0.3], [1.0, 3.0, 2.0]) == 1.0
    assert spearman([0.1, 0.5, 0.3], [3.0, 1.0, 2.0]) == -1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman([0.1, 0.5, 0.3], [1.0, 1.0, 1.0]))
        assert math.isnan(spearman([0.2, 0.2], [1.0, 2.0]))
        assert math.isnan(spearman([0.2], [1.0]))
