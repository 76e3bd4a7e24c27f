"""A growing catalogue: extracting a newer corpus into an existing store extracts only what is
new or changed, and every reader sees the union minus what was superseded or removed.

The real job on a local Ray with tiny backbones; the reference is the session's from-scratch
extraction of the full demo corpus (``extracted``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scalemm import store
from scalemm.extract.info import store_info

MODS = store.MODALITIES


def _lines(corpus: Path) -> list[str]:
    return [x for x in corpus.read_text().splitlines() if x.strip()]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _by_id(root: Path) -> dict[str, dict[str, tuple]]:
    """modality -> id -> (tokens, counts, pooled, entities) of what a reader sees."""
    out = {}
    for m, s in store.open_stores(root).items():
        d = s.load()
        assert len(set(d.ids)) == len(d.ids), f"{m}: an id is read twice"
        out[m] = {i: (d.tokens[r], d.counts[r], d.pooled[r], None if d.entities is None else d.entities[r])
                  for r, i in enumerate(d.ids)}
    return out


def _same_rows(a: dict, b: dict, ids) -> None:
    for m in MODS:
        for i in ids:
            for x, y in zip(a[m][i], b[m][i]):
                assert (x is None and y is None) or np.array_equal(x, y), (m, i)


def _failures(root: Path) -> list[tuple]:
    recs = [json.loads(x) for x in (root / store.FAILURES).read_text().splitlines()]
    return sorted((str(f["id"]), f["modality"], f["error"]) for f in recs)


@pytest.fixture(scope="module")
def ray_local(extracted):  # after the session's reference extraction, which runs its own Ray
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def grown(ray_local, demo_corpus, tiny_config, tmp_path_factory):
    """A store of the first 24 products, then the full 32-product corpus extracted into it."""
    from scalemm.extract.job import run_extraction

    work = tmp_path_factory.mktemp("grown")
    old = _write(work / "corpus-24.jsonl", _lines(demo_corpus / "corpus.jsonl")[:24])
    out = work / "feats"
    first = run_extraction(old, demo_corpus, out, tiny_config)
    second = run_extraction(demo_corpus / "corpus.jsonl", demo_corpus, out, tiny_config)
    return out, first, second


def test_a_grown_corpus_extracts_only_the_new_products(grown):
    out, first, second = grown
    assert first.items == 24 and first.shards_written == 3
    assert second.extra["new"] == 8 and second.extra["items_processed"] == 8
    assert (second.shards_written, second.shards_skipped) == (1, 3)
    assert second.items == 32 and second.extra["generation"] == 2
    # the old shards are kept as they were, the new one comes from the grown corpus' file
    fps = store.open_modality(out, "text").corpus_fingerprints
    assert fps[:3] != fps[3:] and len(set(fps[:3])) == 1
    assert fps[0] == store.file_fingerprint(out.parent / "corpus-24.jsonl")


def test_the_grown_store_equals_a_from_scratch_extraction(grown, extracted):
    out, _, _ = grown
    ref, _ = extracted
    a, b = _by_id(out), _by_id(ref)
    for m in MODS:
        assert sorted(a[m]) == sorted(b[m]), m
    _same_rows(a, b, list(b["text"]))  # bit-identical tokens, counts, pooled vectors, entities
    assert _failures(out) == _failures(ref)
    info = store_info(out)
    assert info["items"] == 32 and info["failures"] == store_info(ref)["failures"]


def test_every_reader_sees_the_union(grown):
    from scalemm.evaluate.embeddings import frozen_baselines
    from scalemm.fuse.reader import FeatureDataset

    out, _, _ = grown
    ds = FeatureDataset(out)
    assert len(ds) == 32 and len(set(ds.ids)) == 32
    streamed = FeatureDataset(out, stream=True)
    assert streamed.ids == ds.ids
    b1, b2 = ds.get_batch([0, 30]), streamed.get_batch([0, 30])
    for m in MODS:
        assert np.array_equal(b1["tokens"][m].numpy(), b2["tokens"][m].numpy()), m
    base = frozen_baselines(out)
    assert sorted(base["concat_frozen"].ids) == sorted(ds.ids)


@pytest.fixture
def own_corpus(demo_corpus, tmp_path):
    """A copy of the demo corpus (media included) that a test may change."""
    root = tmp_path / "corpus"
    shutil.copytree(demo_corpus, root)
    return root


def _good_image_ids(corpus: Path, n: int) -> list[str]:
    bad = json.loads((corpus / "corpus_stats.json").read_text())["expected_failure_ids"]
    recs = [json.loads(x) for x in _lines(corpus / "corpus.jsonl")]
    return [r["id"] for r in recs if r.get("image") and r["id"] not in bad["image"]][:n]


def test_a_changed_product_is_extracted_again_and_supersedes_its_old_copy(ray_local, own_corpus, tiny_config,
                                                                           tmp_path):
    from scalemm.extract.job import run_extraction

    corpus = own_corpus / "corpus.jsonl"
    out = tmp_path / "feats"
    run_extraction(corpus, own_corpus, out, tiny_config)
    before = _by_id(out)
    recs = [json.loads(x) for x in _lines(corpus)]
    a, b = _good_image_ids(own_corpus, 2)
    ra, rb = (next(r for r in recs if r["id"] == i) for i in (a, b))
    shutil.copyfile(own_corpus / rb["image"], own_corpus / ra["image"])  # a's image replaced by b's
    titled = next(r for r in recs if r.get("title") and r["id"] not in (a, b))
    titled["title"] = "Refurbished " + titled["title"]  # another product's title edited
    _write(corpus, [json.dumps(r) for r in recs])

    again = run_extraction(corpus, own_corpus, out, tiny_config)
    assert again.extra["changed"] == 2 and again.extra["new"] == 0 and again.extra["items_processed"] == 2
    assert again.shards_written == 1 and again.items == 32
    after = _by_id(out)
    # a's image features are now those of b's image, bit for bit; its other modalities are unchanged
    assert np.array_equal(after["image"][a][0], before["image"][b][0])
    assert not np.array_equal(after["image"][a][0], before["image"][a][0])
    _same_rows(after, before, [i for i in before["text"] if i not in (a, b, titled["id"])])
    assert not np.array_equal(after["text"][titled["id"]][0], before["text"][titled["id"]][0])
    info = store_info(out)
    assert info["items"] == 32 and info["changed"] == 2
    assert len(store.read_failures(out)) == len(_failures(out))  # the old copies' records are not counted twice
    nothing = run_extraction(corpus, own_corpus, out, tiny_config)
    assert nothing.shards_written == 0 and nothing.extra["generation"] == again.extra["generation"]


def test_a_removed_product_drops_out_of_what_is_read(ray_local, grown, demo_corpus, tiny_config, tmp_path):
    from scalemm.evaluate.embeddings import frozen_baselines
    from scalemm.extract.job import run_extraction
    from scalemm.fuse.reader import FeatureDataset

    src, _, _ = grown
    out = tmp_path / "feats"
    shutil.copytree(src, out)
    lines = _lines(demo_corpus / "corpus.jsonl")
    gone = [json.loads(x)["id"] for x in lines[5:10]]
    fewer = _write(tmp_path / "corpus.jsonl", lines[:5] + lines[10:])
    stats = run_extraction(fewer, demo_corpus, out, tiny_config)
    assert stats.extra["removed"] == 5 and stats.shards_written == 0 and stats.items == 27
    assert store_info(out)["removed"] == 5 and store_info(out)["items"] == 27
    for m, s in store.open_stores(out).items():
        ids = s.load().ids
        assert len(ids) == 27 and not set(gone) & set(ids), m
    assert not set(gone) & set(FeatureDataset(out).ids)
    assert not set(gone) & set(frozen_baselines(out)["frozen_text"].ids)
    assert not {f["id"] for f in store.read_failures(out)} & set(gone)
    assert not {i for i, *_ in _failures(out)} & set(gone)
    # the shards are untouched: the rows are still on disk, only no longer live
    assert sum(len(store.read_shard(p)[0].ids) for p in store.list_shards(out, "text")) == 32


def test_an_m5product_release_is_extracted_through_its_jsonl_copy(ray_local, demo_corpus, tiny_config, tmp_path):
    """The release JSON is one object: one task converts it to JSONL in the store, the scan and
    decode tasks read that; the bad record is reported by id as read_corpus does."""
    from scalemm.extract.job import run_extraction

    recs = [json.loads(x) for x in _lines(demo_corpus / "corpus.jsonl")[:10]]
    release = {r["id"]: {"title": r.get("title"), "label": r.get("label"), "url": r.get("image"),
                         "video": r.get("video"), "pv": r.get("table") if isinstance(r.get("table"), str) else ""}
               for r in recs}
    release["broken"] = "not a record"
    path = tmp_path / "m5.json"
    path.write_text(json.dumps(release))
    out = tmp_path / "feats"
    stats = run_extraction(path, demo_corpus, out, tiny_config, fmt="m5product")
    assert stats.items == 10 and stats.extra["new"] == 10
    assert sorted(store.open_stores(out)["image"].load().ids) == sorted(r["id"] for r in recs)
    assert any(f["error"].startswith("id broken") for f in json.loads("[" + ",".join(
        (out / store.FAILURES).read_text().splitlines()) + "]"))
    assert store.read_manifest(out)["corpus_fingerprint"] == store.file_fingerprint(path)
    again = run_extraction(path, demo_corpus, out, tiny_config, fmt="m5product")
    assert again.shards_written == 0 and again.items == 10
