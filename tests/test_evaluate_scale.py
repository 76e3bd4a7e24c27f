"""Evaluation at scale: recorded samples, sampled queries against the whole gallery, the
minibatched probe, chunked exact search, the chunk-written catalogue and adding products to
its index without a rebuild."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import scalemm.evaluate.index as index_mod
from scalemm.evaluate.budget import EvalBudget, Samples
from scalemm.evaluate.catalogue import build_catalogue_index, write_vectors
from scalemm.evaluate.embeddings import l2_normalize
from scalemm.evaluate.index import (IndexFileError, IndexSpec, add_to_index, build_index, exact_search, load_index,
                                    search, training_rows)
from scalemm.evaluate.metrics import (cross_modal_recall, drop_self, hits_from_neighbors, linear_probe,
                                      linear_probe_minibatch, retrieval_scores)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def _clusters(n: int, d: int = 16, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    y = rng.integers(0, k, n)
    return l2_normalize(centres[y] + rng.standard_normal((n, d))), y


def test_samples_below_the_limits_sample_nothing_and_above_are_recorded() -> None:
    ev, tr = np.arange(0, 300, 3), np.setdiff1d(np.arange(300), np.arange(0, 300, 3))
    full = Samples.draw(ev, tr, EvalBudget(), seed=0)
    assert not full.sampled and full.workset is None and full.within(None) is full
    assert full.to_json()["retrieval_queries"] == {"used": 100, "of": 100, "sampled": False}
    s = Samples.draw(ev, tr, EvalBudget(max_queries=30, max_sample=50), seed=0)
    assert len(s.queries) == 30 and len(s.probe_train) == 50 and len(s.cluster) == 50 and s.minibatch_probe
    assert s.to_json()["probe_train"] == {"used": 50, "of": 200, "sampled": True}
    again = Samples.draw(ev, tr, EvalBudget(max_queries=30, max_sample=50), seed=0)
    assert np.array_equal(s.queries, again.queries) and np.array_equal(s.probe_train, again.probe_train)
    # the workset: the evaluated split and the probe's train sample, in store order
    w = s.workset
    assert len(w) == 150 and np.array_equal(w, np.sort(w))
    local = s.within(w)
    assert np.array_equal(w[local.eval_rows], ev) and np.array_equal(w[local.train_rows], tr[s.probe_train])
    assert local.probe_train is None and local.minibatch_probe


def test_sampled_queries_score_as_the_same_queries_of_the_full_run(tmp_path) -> None:
    x, y = _clusters(400)
    labels = [f"c{v}" for v in y]
    instances = [f"i{i // 2}" for i in range(400)]
    _, nb = exact_search(x, x, 11)
    q = np.sort(np.random.default_rng(1).choice(400, 60, replace=False))
    got = retrieval_scores(nb[q], labels, instances, 10, query_rows=q)
    # the same figures straight from the hit matrix of those queries
    from scalemm.evaluate.metrics import retrieval_metrics
    ranked = drop_self(nb[q], q, 10)
    assert got["coarse"] == pytest.approx(retrieval_metrics(hits_from_neighbors(ranked, q, labels)))
    assert got["fine"] == pytest.approx(retrieval_metrics(hits_from_neighbors(ranked, q, instances)))


def test_other_query_vectors_are_read_one_per_sampled_query(tmp_path) -> None:
    """Robustness queries (modalities dropped) are held for the sampled queries only: given in
    that order they score as the same products' vectors; a query vector of another product
    changes the figure; a wrong count is refused."""
    from scalemm.evaluate.embeddings import EmbeddingSet
    from scalemm.evaluate.protocol import evaluate_on_split

    base, y = _clusters(75, seed=2)  # 75 instances of four listings each, close to each other
    x = l2_normalize(np.repeat(base, 4, axis=0) + 0.05 * np.random.default_rng(3).standard_normal((300, 16)))
    es = EmbeddingSet([f"p{i}" for i in range(300)], x, [f"c{v}" for v in np.repeat(y, 4)],
                      [f"i{i // 4}" for i in range(300)])
    ev, tr = np.arange(0, 300, 2), np.arange(1, 300, 2)
    view = SimpleNamespace(eval_rows=ev, train_rows=tr)
    s = Samples.draw(ev, tr, EvalBudget(max_queries=40, max_sample=100), seed=0)
    local = s.within(s.workset)
    work = es.subset(s.workset)
    full = evaluate_on_split(work, view, 0, samples=local)
    own = work.vectors[local.eval_rows][local.queries]
    same = evaluate_on_split(work, view, 0, samples=local, queries=own)
    assert same["coarse"] == full["coarse"] and same["fine"] == full["fine"]
    shuffled = evaluate_on_split(work, view, 0, samples=local, queries=own[::-1])
    assert shuffled["fine"]["mAP@1"] < full["fine"]["mAP@1"]
    with pytest.raises(ValueError, match="40 retrieval queries"):
        evaluate_on_split(work, view, 0, samples=local, queries=work.vectors[local.eval_rows])


def test_cross_modal_recall_of_sampled_queries_against_every_item() -> None:
    rng = np.random.default_rng(0)
    g = l2_normalize(rng.standard_normal((500, 8)))
    q = l2_normalize(g + 0.8 * rng.standard_normal((500, 8)))
    q[7] = 0  # a query without the modality is left out
    full = cross_modal_recall(q, g, batch=64)
    rows = np.arange(0, 500, 2)
    part = cross_modal_recall(q, g, batch=64, query_rows=rows)
    alone = cross_modal_recall(q, g, query_rows=np.array([3]))
    assert 0 < part["R@1"] < 1 and part["R@10"] == pytest.approx(full["R@10"], abs=0.08)
    assert alone["R@1"] in (0.0, 1.0)


def test_the_minibatched_probe_learns_what_the_full_batch_probe_learns() -> None:
    x, y = _clusters(3000, d=24, k=12, seed=3)
    labels = np.array([f"c{v}" for v in y], dtype=object)
    a = linear_probe(x[:2000], labels[:2000], x[2000:], labels[2000:])
    b = linear_probe_minibatch(x[:2000], labels[:2000], x[2000:], labels[2000:], batch=256)
    assert b["accuracy"] > 0.8 and abs(a["accuracy"] - b["accuracy"]) < 0.05
    assert linear_probe_minibatch(x[:2000], labels[:2000], x[2000:], labels[2000:], batch=256) == b  # seeded


def test_the_minibatched_probe_leaves_denormal_floats_as_it_found_them() -> None:
    # the probe flushes denormals to zero on one thread while it fits (they slow late epochs up to
    # 40x); the caller's arithmetic and thread count afterwards must be as before
    import torch

    x, y = _clusters(600, d=8, k=4, seed=1)
    labels = np.array([f"c{v}" for v in y], dtype=object)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal
    assert float(tiny * 1.0) > 0
    threads = torch.get_num_threads()
    assert linear_probe_minibatch(x[:400], labels[:400], x[400:], labels[400:], epochs=2)["accuracy"] > 0.5
    assert float(tiny * 1.0) > 0 and torch.get_num_threads() == threads


def test_chunked_exact_search_equals_one_block(monkeypatch) -> None:
    x, _ = _clusters(1000)
    q = x[::37]
    s1, r1 = exact_search(x, q, 10)
    monkeypatch.setattr(index_mod, "_EXACT_CHUNK", 128)
    s2, r2 = exact_search(x, q, 10)
    assert np.array_equal(r1, r2) and np.allclose(s1, s2)


def test_ivf_trains_on_a_sample_of_a_memory_mapped_gallery(tmp_path) -> None:
    x, _ = _clusters(6000, d=16)
    write_vectors(tmp_path / "v.npy", len(x), 16, lambda w: [w(x[i:i + 1000]) for i in range(0, 6000, 1000)])
    mm = np.load(tmp_path / "v.npy", mmap_mode="r", allow_pickle=False)
    assert np.array_equal(np.asarray(mm), x)
    spec = IndexSpec("ivf_flat", "IVF40,Flat", {"nlist": 40, "nprobe": 4})
    rows = training_rows(6000, spec)
    assert rows is not None and len(rows) == 40 * index_mod.TRAIN_POINTS_PER_LIST
    built = build_index(mm, spec=spec, seed=0)
    assert built.ntotal == 6000 and built.spec.params["tuned_recall@10"] >= 0.95
    with pytest.raises(ValueError, match="rows written"):
        write_vectors(tmp_path / "short.npy", 10, 16, lambda w: w(x[:5]))
    assert not (tmp_path / "short.npy").exists()


def test_new_products_join_the_catalogue_index_without_a_rebuild(tmp_path) -> None:
    x, _ = _clusters(3000, d=16, seed=5)
    ids = [f"p{i}" for i in range(3000)]
    write_vectors(tmp_path / "cat.npy", 2500, 16, lambda w: w(x[:2500]))
    info = build_catalogue_index(tmp_path / "cat.npy", ids[:2500], tmp_path / "idx", seed=0)
    assert info["type"] == "hnsw" and info["vectors"] == 2500 and info["ann_recall@10"] > 0.9
    trained_graph = load_index(tmp_path / "idx")
    before = trained_graph.spec.to_json()
    added = add_to_index(tmp_path / "idx", x[2500:], ids[2500:])
    assert added.ntotal == 3000
    again = load_index(tmp_path / "idx")
    assert again.ids == ids and again.spec.to_json() == before  # the same index, grown
    _, rows = search(again, x[2500:], 1)
    assert [again.ids[r] for r in rows[:, 0]] == ids[2500:]  # each new product finds itself
    _, old = search(again, x[:200], 1)
    assert [again.ids[r] for r in old[:, 0]] == ids[:200]
    with pytest.raises(IndexFileError, match="already in the index"):
        add_to_index(tmp_path / "idx", x[:3], ids[:3])
    with pytest.raises(IndexFileError, match="dimension"):
        add_to_index(tmp_path / "idx", np.zeros((1, 8), np.float32), ["new"])
    assert json.loads((tmp_path / "idx" / "ids.json").read_text()) == ids
