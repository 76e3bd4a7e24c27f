"""The joined feature-store reader: join by id, in-memory vs streaming, batching, order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scalemm.store import ShardData, StoreError, open_stores, read_shard, write_shard
from scalemm.fuse.reader import EpochBatchSampler, FeatureDataset, collate, epoch_batches, make_loader
from fuse_helpers import SMALL_SHAPES, write_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("feats")
    info = write_synthetic_store(root, n_items=30, shards=3, missing=0.2, seed=3)
    return root, info


def test_items_match_the_store(store) -> None:
    root, info = store
    ds = FeatureDataset(root)
    assert len(ds) == 30 and ds.in_memory and ds.ids == info["ids"]
    item = ds[12]
    assert item["id"] == "p00012" and item["label"] == info["labels"][12]
    data, _ = read_shard(root / "image" / "shard-00001.h5")
    row = data.ids.index("p00012")
    assert torch.equal(item["tokens"]["image"], torch.from_numpy(data.tokens[row].astype(np.float32)))
    assert item["tokens"]["image"].dtype == torch.float32
    assert int(item["mask"]["image"].sum()) == int(data.counts[row])
    assert bool(item["present"]["image"]) == (data.counts[row] > 0)
    assert item["entities"]["table"].shape == (SMALL_SHAPES["table"][0],)
    assert set(item["entities"]) == {"table"}


def test_streaming_equals_in_memory_and_batches_equal_collated_items(store) -> None:
    root, _ = store
    mem = FeatureDataset(root)
    st = FeatureDataset(root, stream=True)
    small = FeatureDataset(root, memory_budget_gb=1e-6)
    assert not st.in_memory and not small.in_memory
    idx = [29, 0, 11, 10, 20, 5]
    a, b = mem.get_batch(idx), st.get_batch(idx)
    c = collate([mem[i] for i in idx])
    for x in (b, c):
        assert x["ids"] == a["ids"]
        for k in ("tokens", "mask", "present", "entities"):
            for m in a[k]:
                assert torch.equal(a[k][m], x[k][m]), (k, m)
    assert collate(a) is a


def test_streaming_loader_reads_in_workers(store) -> None:
    root, _ = store
    st = FeatureDataset(root, stream=True)
    sampler = EpochBatchSampler(st, 8, seed=1)
    loader = make_loader(st, sampler, workers=0)
    assert loader.num_workers == 1  # streaming never reads shards in the parent
    seen = [i for b in loader for i in b["ids"]]
    assert len(seen) == 24 and len(set(seen)) == 24
    assert len(st._cache) == 0  # the parent's copy never opened a shard


def test_subset_of_modalities_and_join_by_id(tmp_path) -> None:
    root = tmp_path / "f"
    write_synthetic_store(root, n_items=10, shards=1, modalities=("image", "text"), seed=1)
    # rewrite the text shard with its rows in another order: the reader must join by id
    data, prov = read_shard(root / "text" / "shard-00000.h5")
    perm = np.arange(10)[::-1]
    shuffled = ShardData(ids=[data.ids[i] for i in perm], labels=[data.labels[i] for i in perm],
                         instances=[data.instances[i] for i in perm], tokens=data.tokens[perm],
                         counts=data.counts[perm], pooled=data.pooled[perm])
    write_shard(root / "text" / "shard-00000.h5", shuffled, prov, 0)
    for stream in (False, True):
        ds = FeatureDataset(root, ["text", "image"], stream=stream)
        assert ds.modalities == ["image", "text"]
        b = ds.get_batch([0, 3])
        assert torch.equal(b["tokens"]["text"][0], torch.from_numpy(data.tokens[0].astype(np.float32)))
        assert torch.equal(b["tokens"]["text"][1], torch.from_numpy(data.tokens[3].astype(np.float32)))
        assert set(b["tokens"]) == {"image", "text"}
    # different items cannot be joined
    other = ShardData(ids=[f"x{i}" for i in range(10)], labels=data.labels, instances=data.instances,
                      tokens=data.tokens, counts=data.counts, pooled=data.pooled)
    write_shard(root / "text" / "shard-00000.h5", other, prov, 0)
    with pytest.raises(StoreError, match="different items"):
        FeatureDataset(root, ["image", "text"])


def test_provenance_mismatch_error_surfaces_unchanged(tmp_path) -> None:
    root = tmp_path / "f"
    write_synthetic_store(root, n_items=8, shards=1, modalities=("image", "text"),
                          prov_overrides={"text": {"corpus_fingerprint": "another-corpus"}})
    with pytest.raises(StoreError) as direct:
        open_stores(root, ["image", "text"])
    with pytest.raises(StoreError) as via_reader:
        FeatureDataset(root, ["image", "text"])
    assert str(via_reader.value) == str(direct.value)
    assert "corpus_fingerprint" in str(via_reader.value)
    with pytest.raises(StoreError, match="does not exist"):
        FeatureDataset(tmp_path / "nowhere")


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    a = epoch_batches(100, 16, seed=3, epoch=2)
    b = epoch_batches(100, 16, seed=3, epoch=2)
    c = epoch_batches(100, 16, seed=3, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == 6
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    assert len(set(np.concatenate(a).tolist())) == 96  # short last batch dropped
    grouped = np.concatenate(epoch_batches(30, 10, 0, 0, drop_last=False, shard_sizes=[10, 10, 10]))
    assert sorted(grouped.tolist()) == list(range(30))
    assert all(len(set(grouped[k * 10:(k + 1) * 10] // 10)) == 1 for k in range(3))  # shards stay together
    assert len(epoch_batches(5, 16, 0, 0)) == 1  # a dataset smaller than a batch keeps its one batch


def test_a_missing_modality_store_names_the_config_key(tmp_path) -> None:
    root = tmp_path / "f"
    write_synthetic_store(root, n_items=6, shards=1, modalities=("image", "text"))
    with pytest.raises(StoreError, match=r"no table shards under .*leave 'table' out of the modalities"):
        FeatureDataset(root)
    assert FeatureDataset(root, ["image", "text"]).modalities == ["image", "text"]


def test_instance_groups_stay_together_in_shuffled_batches() -> None:
    """With groups, the listings of one instance are adjacent in the shuffled order (so they meet
    in a batch); the order is still a function of (seed, epoch) and covers every item once."""
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, size=100)
    a = epoch_batches(100, 16, seed=1, epoch=0, drop_last=False, groups=groups)
    b = epoch_batches(100, 16, seed=1, epoch=0, drop_last=False, groups=groups)
    c = epoch_batches(100, 16, seed=1, epoch=1, drop_last=False, groups=groups)
    order = np.concatenate(a)
    assert sorted(order.tolist()) == list(range(100))
    assert all((x == y).all() for x, y in zip(a, b)) and not np.array_equal(order, np.concatenate(c))
    seq = groups[order]
    runs = [seq[0]] + [g for prev, g in zip(seq[:-1], seq[1:]) if g != prev]
    assert len(runs) == len(set(groups.tolist()))  # each group one contiguous run
    plain = groups[np.concatenate(epoch_batches(100, 16, seed=1, epoch=0, drop_last=False))]
    assert len([g for prev, g in zip(plain[:-1], plain[1:]) if g != prev]) + 1 > len(set(groups.tolist()))
