import numpy as np
import pytest

from scalemm import store
from scalemm.store import Provenance, ShardData, StoreError


def prov(modality="image", **kw):
    base = dict(modality=modality, backbone="x:y", weights_hash="abc", pretrained=True,
                preprocessing={"size": 8}, code_version="v1", corpus_fingerprint="fp",
                dim=4, pooled_dim=3, max_tokens=5)
    base.update(kw)
    return Provenance(**base)


def shard(n=3, entities=False, seed=0):
    r = np.random.default_rng(seed)
    return ShardData(ids=[f"p{i}" for i in range(n)], labels=["a", "b", ""][:n] + ["c"] * max(0, n - 3),
                     instances=["i"] * n, tokens=r.standard_normal((n, 5, 4)).astype(np.float16),
                     counts=np.array([5, 0, 2][:n] + [1] * max(0, n - 3), np.int32),
                     pooled=r.standard_normal((n, 3)).astype(np.float32),
                     entities=r.integers(-1, 4, (n, 5)).astype(np.int32) if entities else None)


def test_round_trip_keeps_every_field(tmp_path):
    d, p = shard(entities=True), prov("table")
    path = store.shard_path(tmp_path, "table", 0)
    store.write_shard(path, d, p, 0)
    back, bp = store.read_shard(path)
    assert bp == p and back.ids == d.ids and back.labels == d.labels and back.instances == d.instances
    assert back.tokens.dtype == np.float16 and np.array_equal(back.tokens, d.tokens)
    assert np.array_equal(back.counts, d.counts) and np.array_equal(back.pooled, d.pooled)
    assert np.array_equal(back.entities, d.entities)
    assert not list(path.parent.glob("*.tmp*"))  # the temporary file was renamed away
    part, _ = store.read_shard(path, rows=slice(1, 3))
    assert part.ids == ["p1", "p2"] and np.array_equal(part.tokens, d.tokens[1:3])


def test_truncated_shard_names_the_file(tmp_path):
    path = store.shard_path(tmp_path, "image", 0)
    store.write_shard(path, shard(), prov(), 0)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StoreError, match="shard-00000.h5"):
        store.read_shard(path)
    with pytest.raises(StoreError, match="truncated|cannot read"):
        store.open_modality(tmp_path, "image")


def test_join_refuses_mismatched_provenance(tmp_path):
    store.write_shard(store.shard_path(tmp_path, "image", 0), shard(), prov("image"), 0)
    store.write_shard(store.shard_path(tmp_path, "text", 0), shard(), prov("text", corpus_fingerprint="other"), 0)
    with pytest.raises(StoreError, match="corpus_fingerprint") as e:
        store.open_stores(tmp_path, ["image", "text"])
    assert "image" in str(e.value) and "text" in str(e.value)


def test_shards_of_one_store_must_agree(tmp_path):
    store.write_shard(store.shard_path(tmp_path, "image", 0), shard(), prov(), 0)
    store.write_shard(store.shard_path(tmp_path, "image", 1), shard(), prov(weights_hash="zzz"), 1)
    with pytest.raises(StoreError, match="weights_hash"):
        store.open_modality(tmp_path, "image")


def test_join_refuses_unfinished_stores(tmp_path):
    for k in range(2):
        store.write_shard(store.shard_path(tmp_path, "image", k), shard(), prov("image"), k)
    store.write_shard(store.shard_path(tmp_path, "text", 0), shard(), prov("text"), 0)
    with pytest.raises(StoreError, match="did not finish"):
        store.open_stores(tmp_path, ["image", "text"])


def test_load_concatenates_shards_in_order(tmp_path):
    store.write_shard(store.shard_path(tmp_path, "image", 0), shard(3, seed=1), prov(), 0)
    store.write_shard(store.shard_path(tmp_path, "image", 1), shard(3, seed=2), prov(), 1)
    s = store.open_modality(tmp_path, "image")
    assert s.n_items == 6
    d = s.load()
    assert d.tokens.shape == (6, 5, 4) and d.ids[:3] == ["p0", "p1", "p2"]
    assert np.array_equal(d.pooled[3:], shard(3, seed=2).pooled)


def test_failure_parts_commit_shards_and_merge(tmp_path):
    store.write_failure_part(tmp_path, 1, [{"id": "a", "modality": "video", "error": "x"}])
    store.write_failure_part(tmp_path, 0, [])
    assert store.committed_shards(tmp_path) == {0, 1}
    n = store.merge_failures(tmp_path, [{"id": None, "modality": "record", "error": "line 3: bad"}])
    assert n == 2
    lines = (tmp_path / store.FAILURES).read_text().splitlines()
    assert len(lines) == 2 and '"video"' in lines[1]
    assert store.merge_failures(tmp_path) == 1  # rewritten, never appended twice


def test_shard_data_validates_shapes():
    with pytest.raises(ValueError):
        ShardData(ids=["a"], labels=["x"], instances=["y"], tokens=np.zeros((2, 3, 4), np.float16),
                  counts=np.zeros(1, np.int32), pooled=np.zeros((1, 3), np.float32))


def test_the_live_index_picks_rows_and_shards_of_a_grown_store(tmp_path):
    """Shards of successive corpus versions join shard by shard; only the rows the live index
    names are read, in shard and row order; a shard no index names is never opened."""
    for k in range(3):
        for m in ("image", "text"):
            store.write_shard(store.shard_path(tmp_path, m, k), shard(3, seed=k), prov(m, corpus_fingerprint=f"v{k}"), k)
    (tmp_path / "image" / "shard-00002.h5").write_bytes(b"not read")  # garbage of a killed job: not live
    table = store.make_live_table(["p1", "p0", "p2"], ["a", "b", "c"], [1, 0, 0], [1, 0, 2])
    path = store.write_live_index(tmp_path, 4, table)
    store.write_manifest(tmp_path, {"generation": 4, store.LIVE_KEY: str(path.relative_to(tmp_path))})
    stores = store.open_stores(tmp_path, ["image", "text"])
    img = stores["image"]
    assert img.n_items == 3 and img.corpus_fingerprints == ["v0", "v1"]
    d = img.load()
    assert d.ids == ["p0", "p2", "p1"]
    assert np.array_equal(d.tokens[2], shard(3, seed=1).tokens[1])
    assert img.read_index(1).ids == ["p1"] and img.read(0).ids == ["p0", "p2"]
    # the same shard of two modalities must come from one corpus file
    store.write_shard(store.shard_path(tmp_path, "text", 1), shard(3, seed=1), prov("text", corpus_fingerprint="v9"), 1)
    with pytest.raises(StoreError, match="corpus_fingerprint"):
        store.open_stores(tmp_path, ["image", "text"])
