"""The synthetic scale store (corpora/scalestore.py): a valid store, marked synthetic, whose
categories and instances are recoverable from its features, written the same every time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scalemm.corpora.scalestore import ScaleStoreSpec, StoreExists, bytes_per_item, write_scale_store
from scalemm.store import read_failures, read_manifest, read_shard
from cli_output import last_json


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scale") / "feats"
    return out, write_scale_store(out, ScaleStoreSpec(n_items=3000, shard_size=700, n_categories=12), progress=False)


def test_a_valid_store_marked_synthetic(store) -> None:
    from scalemm.extract.info import store_info
    from scalemm.fuse.reader import FeatureDataset

    out, summary = store
    assert summary["items"] == 3000 and summary["shards"] == 5 and summary["categories"] == 12
    info = store_info(out)  # what pipelines/store_info.py prints
    assert info["items"] == 3000 and info["shards"] == 5 and info["failures"] == summary["failures"] > 0
    for m, d in info["modalities"].items():
        assert d["pretrained"] is False and d["backbone"] == f"synthetic:scale-{m}"
        assert 0.85 * 3000 < d["present"] < 0.95 * 3000  # 10 % absent
    data, prov = read_shard(out / "table" / "shard-00001.h5")
    assert prov.preprocessing["synthetic"] is True and prov.preprocessing["n_items"] == 3000
    assert read_manifest(out)["synthetic"] is True
    # a failure is an absent entry, as an extraction failure leaves it
    for rec in read_failures(out)[:50]:
        d, _ = read_shard(out / rec["modality"] / f"shard-{rec['shard']:05d}.h5")
        assert d.counts[d.ids.index(rec["id"])] == 0
    # table tokens carry key/value entities; tokens are zero beyond the count
    valid = np.arange(data.tokens.shape[1])[None] < data.counts[:, None]
    assert ((data.entities >= 0) == valid).all() and not data.tokens[~valid].any()
    ds = FeatureDataset(out)
    assert len(ds) == 3000 and len(set(ds.ids)) == 3000 and ds.in_memory


def test_categories_and_instances_are_planted_and_recoverable(store) -> None:
    from scalemm.evaluate.embeddings import frozen_baselines
    from scalemm.evaluate.tasks import evaluate_retrieval

    out, _ = store
    fb = frozen_baselines(out)
    es = fb["concat_frozen"]
    per_inst = Counter(es.instances)
    assert set(per_inst.values()) == {2}  # two listings per instance ...
    label_of = {}
    for inst, lab in zip(es.instances, es.labels):
        assert label_of.setdefault(inst, lab) == lab  # ... of one category
    shard_of = {}
    spread = 0
    for i, inst in enumerate(es.instances):  # ... spread over the store, not neighbours
        spread += inst in shard_of and shard_of[inst] != i // 700
        shard_of.setdefault(inst, i // 700)
    assert spread > 0.6 * len(per_inst)
    r = evaluate_retrieval(es)
    assert r["coarse"]["mAP@1"] > 0.9 and r["fine"]["mAP@1"] > 0.2  # chance: 1/12 and 1/2999
    alone = evaluate_retrieval(fb["frozen_text"])
    assert alone["fine"]["mAP@1"] < r["fine"]["mAP@1"]  # each modality alone knows less


def test_the_same_spec_writes_the_same_store_and_a_used_folder_is_refused(store, tmp_path) -> None:
    out, _ = store
    again = tmp_path / "again"
    write_scale_store(again, ScaleStoreSpec(n_items=3000, shard_size=700, n_categories=12), progress=False)
    a, pa = read_shard(out / "video" / "shard-00004.h5")
    b, pb = read_shard(again / "video" / "shard-00004.h5")
    assert pa == pb and a.ids == b.ids and np.array_equal(a.tokens, b.tokens) and np.array_equal(a.pooled, b.pooled)
    with pytest.raises(StoreExists, match="not an empty folder"):
        write_scale_store(again, ScaleStoreSpec(n_items=10), progress=False)
    on_disk = sum(p.stat().st_size for p in out.rglob("*.h5"))
    assert 0.8 < on_disk / (3000 * bytes_per_item(ScaleStoreSpec(n_items=3000))) < 1.3


def test_the_command_line(run_cli, tmp_path) -> None:
    rc, stdout, err, _ = run_cli("make_scalestore.py", "--out", str(tmp_path / "f"), "--items", "300", "--quiet")
    assert rc == 0, err
    assert last_json(stdout)["items"] == 300
    rc, _, err, _ = run_cli("make_scalestore.py", "--out", str(tmp_path / "f"), "--items", "300", "--quiet")
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    rc, _, err, _ = run_cli("make_scalestore.py", "--out", str(tmp_path / "g"), "--items", "10000000000", "--quiet")
    assert rc == 2 and "GB free" in err.strip().splitlines()[-1] and not (tmp_path / "g").exists()
