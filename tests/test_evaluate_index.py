"""evaluate.index: index choice, build / save / load / rebuild, ANN recall."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from scalemm.evaluate.embeddings import EmbeddingSet, l2_normalize
from scalemm.evaluate.index import (IndexFileError, IndexSpec, ann_recall_at_k, build_index, choose_index,
                            estimate_bytes, exact_search, load_index, rebuild_index, save_index,
                            search)


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def clustered(n: int, dim: int = 32, n_clusters: int = 40, noise: float = 0.35, seed: int = 0):
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(n_clusters, dim))
    lab = rng.integers(0, n_clusters, n)
    return l2_normalize(cent[lab] + noise * rng.normal(size=(n, dim))), lab


# ----------------------------------------------------------------------------- choice

def test_choice_by_size() -> None:
    assert choose_index(1_000, 64).kind == "flat"
    assert choose_index(19_999, 64).factory_string == "Flat"
    big = choose_index(20_000, 64)
    assert big.kind == "hnsw" and big.factory_string.startswith("HNSW")
    assert choose_index(1_000, 64, force_approximate=True).kind == "hnsw"
    assert choose_index(50_000, 64, exact_threshold=100_000).kind == "flat"


def test_choice_by_memory_budget() -> None:
    n, d = 1_000_000, 256
    vec = 4 * n * d
    assert choose_index(n, d, memory_budget_bytes=None).kind == "hnsw"
    assert choose_index(n, d, memory_budget_bytes=2 * vec).kind == "hnsw"
    ivf = choose_index(n, d, memory_budget_bytes=int(1.05 * vec))
    assert ivf.kind == "ivf_flat" and ivf.factory_string == f"IVF{ivf.params['nlist']},Flat"
    pq = choose_index(n, d, memory_budget_bytes=vec // 8)
    assert pq.kind == "ivf_pq" and d % pq.params["pq_m"] == 0
    assert pq.params["estimated_bytes"] <= vec // 8
    small = choose_index(n, d, memory_budget_bytes=vec // 40)
    assert small.kind == "ivf_pq" and small.params["pq_m"] < pq.params["pq_m"]
    with pytest.raises(ValueError, match="too small"):
        choose_index(n, d, memory_budget_bytes=1000)
    # a small gallery whose flat vectors exceed the budget is not indexed exactly
    assert choose_index(10_000, d, memory_budget_bytes=estimate_bytes("flat", 10_000, d) // 2).kind == "ivf_pq"


def test_spec_json_roundtrip() -> None:
    spec = choose_index(100_000, 32)
    assert IndexSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


# ----------------------------------------------------------------------------- search

def test_exact_search_matches_numpy() -> None:
    x, _ = clustered(300, 16)
    q = x[:20]
    s, i = exact_search(x, q, 5)
    sims = q @ x.T
    ref = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert np.allclose(s, np.take_along_axis(sims, ref, 1), atol=1e-5)
    assert (i[:, 0] == np.arange(20)).all()  # each query is its own best match
    assert np.allclose(np.take_along_axis(sims, i, 1), s, atol=1e-5)


def test_ann_recall_at_k_by_hand() -> None:
    approx = np.array([[0, 1, 2], [5, 6, -1]])
    exact = np.array([[0, 1, 3], [7, 6, 5]])
    assert ann_recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert ann_recall_at_k(exact, exact, 3) == 1.0
    # ties: result 2 has the same score as the exact 3rd result, so it counts
    assert ann_recall_at_k(approx[:1], exact[:1], 3, approx_scores=np.array([[0.9, 0.8, 0.7]]),
                           exact_scores=np.array([[0.9, 0.8, 0.7]])) == 1.0


@pytest.mark.parametrize("budget", [None, "ivf"])
def test_ann_recall_on_clustered_data(budget) -> None:
    n, d = 3000, 32
    x, _ = clustered(n, d)
    mem = None if budget is None else estimate_bytes("ivf_flat", n, d, nlist=100) + 10_000
    built = build_index(x, force_approximate=True, memory_budget_bytes=mem, seed=0)
    assert built.spec.kind == ("hnsw" if budget is None else "ivf_flat")
    rng = np.random.default_rng(11)
    q = l2_normalize(x[rng.choice(n, 300, replace=False)] + 0.1 * rng.normal(size=(300, d)))
    _, ex = exact_search(x, q, 10)
    _, ap = search(built, q, 10)
    assert ann_recall_at_k(ap, ex, 10) >= 0.95
    assert built.spec.params["tuned_recall@10"] >= 0.95


def test_ivf_pq_builds_and_searches() -> None:
    n, d = 1500, 16
    x, _ = clustered(n, d)
    spec = choose_index(n, d, memory_budget_bytes=n * 20, force_approximate=True)
    assert spec.kind == "ivf_pq"
    built = build_index(x, spec=spec, seed=0)
    s, i = search(built, x[:50], 10)
    assert i.shape == (50, 10) and (i >= 0).all()
    _, ex = exact_search(x, x[:50], 10)
    assert ann_recall_at_k(i, ex, 10) > 0.3  # compressed, but far better than chance


# ----------------------------------------------------------------------------- persistence

@pytest.mark.parametrize("force", [False, True])
def test_save_load_and_rebuild_give_identical_results(tmp_path, force) -> None:
    n, d = 800, 16
    x, lab = clustered(n, d, n_clusters=10)
    es = EmbeddingSet([f"p{i}" for i in range(n)], x, [f"c{l}" for l in lab], [""] * n)
    npz = es.save(tmp_path / "emb.npz")
    built = build_index(es.vectors, es.ids, force_approximate=force)
    assert built.spec.kind == ("hnsw" if force else "flat")
    save_index(built, tmp_path / "idx")
    for f in ("index.faiss", "ids.json", "spec.json"):
        assert (tmp_path / "idx" / f).is_file()
    assert json.loads((tmp_path / "idx" / "ids.json").read_text()) == es.ids

    q = x[::7]
    s0, i0 = search(built, q, 10)
    loaded = load_index(tmp_path / "idx")
    assert loaded.ids == es.ids and loaded.spec == built.spec
    s1, i1 = search(loaded, q, 10)
    assert np.array_equal(i0, i1) and np.array_equal(s0, s1)

    rebuilt = rebuild_index(npz, tmp_path / "idx2", force_approximate=force)
    s2, i2 = search(rebuilt, q, 10)
    assert np.array_equal(i0, i2) and np.allclose(s0, s2)
    assert rebuilt.spec.kind == built.spec.kind
    s3, i3 = search(load_index(tmp_path / "idx2"), q, 10)
    assert np.array_equal(i0, i3)


def test_only_an_approximate_index_logs_its_build_and_save_at_info(tmp_path, caplog) -> None:
    # the evaluation builds an exact index per method and seed (24 lines in the demo); the
    # catalogue's approximate build, which takes minutes at scale, is the one a user looks for
    x, _ = clustered(800, 16, n_clusters=10)
    for force, kind in ((False, "flat"), (True, "hnsw")):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="scalemm.evaluate.index"):
            save_index(build_index(x, force_approximate=force), tmp_path / kind)
        lines = {r.getMessage().split()[0]: r.levelno for r in caplog.records
                 if r.getMessage().startswith(("built", "saved"))}
        level = logging.INFO if force else logging.DEBUG
        assert lines == {"built": level, "saved": level}, (kind, lines)


def test_load_index_errors(tmp_path) -> None:
    with pytest.raises(IndexFileError, match="lacks"):
        load_index(tmp_path)
    x, _ = clustered(50, 8)
    built = build_index(x)
    save_index(built, tmp_path)
    (tmp_path / "ids.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(IndexFileError, match="ids"):
        load_index(tmp_path)
