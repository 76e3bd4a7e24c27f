"""evaluate.embeddings: EmbeddingSet persistence and the frozen baselines from a real store."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from scalemm.evaluate.embeddings import EmbeddingSet, frozen_baselines, l2_normalize
from scalemm.store import (Provenance, ShardData, StoreError, shard_path, write_failure_part,
                           write_shard)


def test_l2_normalize_keeps_zero_rows() -> None:
    x = np.array([[3, 4], [0, 0], [1e-20, 0]], np.float64)
    y = l2_normalize(x)
    assert y.dtype == np.float32
    assert np.allclose(y, [[0.6, 0.8], [0, 0], [0, 0]])
    assert np.allclose(l2_normalize(np.array([0.0, 2.0])), [0, 1])


def test_embedding_set_roundtrip_without_pickle(tmp_path: Path) -> None:
    es = EmbeddingSet(["p1", "p²", "商品3"], np.arange(6, dtype=np.float64).reshape(3, 2),
                      ["kettle", "", "茶壶"], ["i1", "", "i1"])
    path = es.save(tmp_path / "sub" / "emb.npz")
    assert path == tmp_path / "sub" / "emb.npz" and path.is_file()
    with np.load(path, allow_pickle=False) as z:
        assert z["ids"].dtype.kind == "U" and z["vectors"].dtype == np.float32
    back = EmbeddingSet.load(path)
    assert back.ids == es.ids and back.labels == es.labels and back.instances == es.instances
    assert np.array_equal(back.vectors, es.vectors) and back.vectors.dtype == np.float32
    sub = es.subset([2, 0])
    assert sub.ids == ["商品3", "p1"] and np.array_equal(sub.vectors, es.vectors[[2, 0]])
    assert es.subset(np.array([False, True, False])).ids == ["p²"]


def test_embedding_set_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="N=2"):
        EmbeddingSet(["a", "b"], np.zeros((3, 2)), ["", ""], ["", ""])
    with pytest.raises(ValueError, match="unique"):
        EmbeddingSet(["a", "a"], np.zeros((2, 2)), ["", ""], ["", ""])
    with pytest.raises(FileNotFoundError):
        EmbeddingSet.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        EmbeddingSet.load(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------- frozen baselines

DIMS = {"text": 6, "image": 4, "table": 5}


def _prov(modality: str) -> Provenance:
    return Provenance(modality=modality, backbone=f"test:{modality}", weights_hash="0" * 8,
                      pretrained=False, preprocessing={"n": 1}, code_version="test",
                      corpus_fingerprint="corpus-abc", dim=3, pooled_dim=DIMS[modality],
                      max_tokens=4)


def _write_store(root: Path, n_per_shard: int = 4, n_shards: int = 2, seed: int = 0,
                 ids_override: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Write text / image / table stores; return each modality's pooled matrix (absent: 0)."""
    rng = np.random.default_rng(seed)
    n = n_per_shard * n_shards
    ids = [f"p{i}" for i in range(n)]
    labels = [f"c{i % 3}" for i in range(n)]
    instances = [f"i{i // 2}" if i < 4 else "" for i in range(n)]
    absent = {"text": set(), "image": {1, 5}, "table": {2}}
    pooled_all: dict[str, np.ndarray] = {}
    for m, dim in DIMS.items():
        prov = _prov(m)
        pooled = rng.normal(size=(n, dim)).astype(np.float32)
        for i in absent[m]:
            pooled[i] = 0.0
        pooled_all[m] = pooled
        for s in range(n_shards):
            rows = slice(s * n_per_shard, (s + 1) * n_per_shard)
            sid = (ids_override or {}).get(m, ids)[rows]
            data = ShardData.empty(sid, labels[rows], instances[rows], prov,
                                   with_entities=(m == "table"))
            data.pooled[:] = pooled[rows]
            for j, i in enumerate(range(rows.start, rows.stop)):
                if i not in absent[m]:
                    data.counts[j] = 2
                    data.tokens[j, :2] = 1.0
            write_shard(shard_path(root, m, s), data, prov, s)
    for s in range(n_shards):
        recs = [{"id": f"p{i}", "modality": m, "error": "decode failed"}
                for m, ab in absent.items() for i in sorted(ab)
                if s * n_per_shard <= i < (s + 1) * n_per_shard and m != "text"]
        write_failure_part(root, s, recs)
    return pooled_all


def test_frozen_baselines_from_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pooled = _write_store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="scalemm.evaluate.embeddings"):
        out = frozen_baselines(tmp_path)
    assert set(out) == {"frozen_text", "frozen_image", "frozen_table", "concat_frozen"}
    assert "video" in caplog.text and "audio" in caplog.text  # skipped stores are warned about

    ids = [f"p{i}" for i in range(8)]
    for m in DIMS:
        es = out[f"frozen_{m}"]
        assert es.ids == ids and es.labels[:3] == ["c0", "c1", "c2"]
        assert es.instances[:4] == ["i0", "i0", "i1", "i1"] and es.instances[4] == ""
        assert es.vectors.shape == (8, DIMS[m])
        norms = np.linalg.norm(pooled[m], axis=1, keepdims=True)
        expected = np.where(norms > 0, pooled[m] / np.where(norms > 0, norms, 1), 0)
        assert np.allclose(es.vectors, expected, atol=1e-6)
    assert np.all(out["frozen_image"].vectors[[1, 5]] == 0)
    assert np.all(out["frozen_table"].vectors[2] == 0)

    concat = out["concat_frozen"]
    assert concat.vectors.shape == (8, sum(DIMS.values()))
    parts = np.concatenate([out[f"frozen_{m}"].vectors for m in ("image", "text", "table")], 1)
    assert np.allclose(concat.vectors, parts / np.linalg.norm(parts, axis=1, keepdims=True), atol=1e-6)
    assert np.allclose(np.linalg.norm(concat.vectors, axis=1), 1.0, atol=1e-5)


def test_frozen_baselines_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        frozen_baselines(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no feature stores"):
        frozen_baselines(tmp_path / "empty")
    # same layout, but the image store holds other items: refused
    other = [f"q{i}" for i in range(8)]
    _write_store(tmp_path / "bad", ids_override={"image": other})
    with pytest.raises(StoreError, match="differ in id"):
        frozen_baselines(tmp_path / "bad")
