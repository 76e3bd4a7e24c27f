"""evaluate.metrics: the paper's protocol against hand-computed cases, brute force and sklearn."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, normalized_mutual_info_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from scalemm.evaluate.metrics import (RETRIEVAL_KEYS, classification, clustering, cross_modal_recall,
                              drop_self, fine_query_mask, hits_from_neighbors, purity_score,
                              retrieval_metrics, retrieval_scores, stratified_split)


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


# ----------------------------------------------------------------------------- retrieval

def test_retrieval_metrics_hand_computed() -> None:
    hits = np.array([
        [1, 0, 1, 0, 0, 0, 0, 0, 0, 1],  # hits at ranks 1, 3, 10
        [0, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # hit at rank 2
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no hit
    ], dtype=bool)
    # row 1: Prec@1=1, Prec@3=2/3, Prec@10=3/10
    #   AP@1=1, AP@5=(1+2/3)/2=5/6, AP@10=(1+2/3+3/10)/3=59/90; Prec@5=2/5, Prec@10=3/10
    # row 2: AP@1=0, AP@5=AP@10=Prec@2=1/2; Prec@1=0, Prec@5=1/5, Prec@10=1/10
    # row 3: all zero
    m = retrieval_metrics(hits)
    assert list(m) == list(RETRIEVAL_KEYS)
    expected = {
        "mAP@1": 1 / 3, "mAP@5": (5 / 6 + 1 / 2) / 3, "mAP@10": (59 / 90 + 1 / 2) / 3,
        "Prec@1": 1 / 3, "Prec@5": (2 / 5 + 1 / 5) / 3, "Prec@10": (3 / 10 + 1 / 10) / 3,
    }
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-12), k


def test_retrieval_metrics_all_hits_and_short_rows() -> None:
    m = retrieval_metrics(np.ones((4, 10), bool))
    assert all(v == pytest.approx(1.0) for v in m.values())
    # a 3-item gallery: ranks 4..10 are misses
    m = retrieval_metrics(np.ones((2, 3), bool))
    assert m["Prec@10"] == pytest.approx(0.3) and m["mAP@10"] == pytest.approx(1.0)
    assert m["Prec@5"] == pytest.approx(0.6)
    assert retrieval_metrics(np.zeros((0, 10), bool))["mAP@1"] == 0.0


def _brute_force(hits: np.ndarray, K: int) -> tuple[float, float]:
    aps, precs = [], []
    for row in hits:
        n_hit, s = 0, 0.0
        for k in range(1, K + 1):
            if row[k - 1]:
                n_hit += 1
                s += n_hit / k
        aps.append(s / n_hit if n_hit else 0.0)
        precs.append(sum(row[:K]) / K)
    return float(np.mean(aps)), float(np.mean(precs))


def test_retrieval_metrics_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    hits = rng.random((60, 10)) < rng.random((60, 1))
    m = retrieval_metrics(hits)
    for K in (1, 5, 10):
        ap, prec = _brute_force(hits, K)
        assert m[f"mAP@{K}"] == pytest.approx(ap, abs=1e-12)
        assert m[f"Prec@{K}"] == pytest.approx(prec, abs=1e-12)


def test_drop_self() -> None:
    nb = np.array([[0, 5, 6, 7], [5, 6, 1, 7], [5, 6, 7, 8]])
    out = drop_self(nb, np.array([0, 1, 2]), 3)
    assert out.tolist() == [[5, 6, 7], [5, 6, 7], [5, 6, 7]]
    with pytest.raises(ValueError):
        drop_self(nb, np.array([0, 1, 2]), 4)


def test_hits_and_fine_queries() -> None:
    labels = ["a", "a", "b", ""]
    assert hits_from_neighbors(np.array([[1, 2, -1], [3, 0, 2]]), np.array([0, 3]),
                               labels).tolist() == [[True, False, False], [False, False, False]]
    assert fine_query_mask(["x", "x", "", "y", "z", "z", ""]).tolist() == [
        True, True, False, False, True, True, False]


def test_retrieval_scores_leave_one_out_by_hand() -> None:
    # 5 items; neighbors include the query itself (as exact search returns it)
    labels = ["a", "a", "b", "b", "a"]
    instances = ["i1", "i1", "", "i9", "i2"]
    nb = np.array([
        [0, 2, 1, 3],  # q0: a -> b, a, b   ; instance i1: -, hit, -
        [1, 0, 4, 2],  # q1: a -> a, a, b   ; instance i1: hit, -, -
        [2, 3, 0, 1],  # q2: b -> b, a, a
        [3, 4, 2, 0],  # q3: b -> a, b, a
        [4, 0, 1, 2],  # q4: a -> a, a, b
    ])
    out = retrieval_scores(nb, labels, instances, k=3)
    coarse_hits = np.array([[0, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], bool)
    assert out["coarse"] == pytest.approx(retrieval_metrics(coarse_hits))
    # fine queries: only q0 and q1 (i9, i2 are singletons, q2 has no instance)
    fine_hits = np.array([[0, 1, 0], [1, 0, 0]], bool)
    assert out["fine"] == pytest.approx(retrieval_metrics(fine_hits))
    assert out["fine"]["mAP@1"] == pytest.approx(0.5)
    assert out["coarse"]["Prec@1"] == pytest.approx(3 / 5)


# ----------------------------------------------------------------------------- classification

def _blobs(n_per: int, n_cls: int, dim: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(n_cls, dim))
    y = np.repeat(np.arange(n_cls), n_per)
    x = (cent[y] + noise * rng.normal(size=(len(y), dim))).astype(np.float32)
    return x, [f"c{i}" for i in y]


def test_stratified_split_singletons_to_train() -> None:
    labels = ["a"] * 10 + ["b"] * 2 + ["c"]
    train, test = stratified_split(labels, 0.3, seed=1)
    assert sorted(train.tolist() + test.tolist()) == list(range(13))
    assert 12 in train  # the single "c"
    assert sum(labels[i] == "a" for i in test) == 3
    assert sum(labels[i] == "b" for i in test) == 1
    again = stratified_split(labels, 0.3, seed=1)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_classification_equals_sklearn() -> None:
    x, y = _blobs(20, 4, 8, noise=2.0)
    out = classification(x, y, seed=0)
    train, test = stratified_split(y, 0.3, seed=0)
    ya = np.array(y)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=0))
    pred = probe.fit(x[train], ya[train]).predict(x[test])
    assert out["accuracy"] == pytest.approx(accuracy_score(ya[test], pred))
    assert out["macro_f1"] == pytest.approx(f1_score(ya[test], pred, average="macro"))
    assert 0.0 < out["accuracy"] < 1.0  # noisy enough not to be trivial


def test_classification_separable_is_perfect() -> None:
    x, y = _blobs(10, 3, 8, noise=0.01)
    assert classification(x, y) == {"accuracy": 1.0, "macro_f1": 1.0}


# ----------------------------------------------------------------------------- clustering

def test_purity_by_hand() -> None:
    # cluster 0: a a -> 2; cluster 1: a b b -> 2; cluster 2: c -> 1; purity 5/6
    assert purity_score(list("aaabbc"), [0, 0, 1, 1, 1, 2]) == pytest.approx(5 / 6)
    assert purity_score(list("ab"), [0, 0]) == pytest.approx(0.5)


def test_clustering_matches_sklearn_nmi() -> None:
    x, y = _blobs(15, 4, 6, noise=1.5, seed=2)
    out = clustering(x, y, seed=7)
    km = faiss.Kmeans(6, 4, niter=25, seed=7, spherical=True, verbose=False, min_points_per_centroid=1)
    km.train(x)
    pred = km.index.search(x, 1)[1][:, 0]
    assert out["nmi"] == pytest.approx(normalized_mutual_info_score(y, pred))
    assert out["purity"] == pytest.approx(purity_score(y, pred.tolist()))


def test_clustering_separated_blobs() -> None:
    x, y = _blobs(20, 3, 8, noise=0.01, seed=4)
    out = clustering(x, y, seed=0)
    assert out["nmi"] == pytest.approx(1.0) and out["purity"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- cross-modal

def test_cross_modal_recall_planted_and_shuffled() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=(200, 32)).astype(np.float32)
    q = g + 0.05 * rng.normal(size=g.shape).astype(np.float32)
    assert cross_modal_recall(q, g) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    shuffled = cross_modal_recall(q[rng.permutation(200)], g)
    assert shuffled["R@1"] < 0.1 and shuffled["R@10"] < 0.2
    assert shuffled["R@1"] <= shuffled["R@5"] <= shuffled["R@10"]


def test_cross_modal_recall_by_hand_and_zero_rows() -> None:
    g = np.array([[1, 0], [0, 1], [1, 1], [5, 5]], np.float32)
    q = np.array([[1, 0.1], [1, 0], [0, 0], [1, 1]], np.float32)
    # row 2 has a zero query: left out of both sides (gallery {g0, g1, g3}).
    # q0 scores g0=1, g1=.1, g3=5.5 -> correct g0 at rank 2
    # q1 scores g0=1, g1=0,  g3=5   -> correct g1 at rank 3
    # q3 scores g0=1, g1=1,  g3=10  -> correct g3 at rank 1
    out = cross_modal_recall(q, g, k=(1, 2, 3))
    assert out == {"R@1": pytest.approx(1 / 3), "R@2": pytest.approx(2 / 3), "R@3": pytest.approx(1.0)}
    assert cross_modal_recall(np.zeros((3, 2)), np.ones((3, 2)))["R@1"] == 0.0
