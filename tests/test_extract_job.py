"""The Ray extraction job in process (local Ray, tiny backbones, the real demo corpus)."""

import json
import shutil

import numpy as np
import pytest

from scalemm import store
from scalemm.extract.info import store_info


def _expected(corpus):
    return json.loads((corpus / "corpus_stats.json").read_text())["modalities"]


def test_stores_hold_what_the_corpus_says(extracted, demo_corpus):
    out, stats = extracted
    info = store_info(out)
    exp = _expected(demo_corpus)
    assert info["items"] == 32 and stats.items == 32
    for m in store.MODALITIES:
        assert info["modalities"][m]["present"] == exp[m]["expected_ok"], m
        assert info["modalities"][m]["failed"] == exp[m]["expected_failures"], m
        assert info["modalities"][m]["pretrained"] is False  # tiny random backbones
    assert info["failures"] == sum(e["expected_failures"] for e in exp.values())
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len({(f["id"], f["modality"]) for f in fails}) == len(fails)  # each item x modality once
    assert all(f["error"] for f in fails)


def test_store_rows_follow_corpus_and_provenance(extracted, demo_corpus):
    out, _ = extracted
    recs = [json.loads(line) for line in (demo_corpus / "corpus.jsonl").read_text().splitlines()]
    stores = store.open_stores(out)
    table = stores["table"].load()
    assert table.ids == [r["id"] for r in recs]
    assert table.labels == [r["label"] for r in recs]
    assert table.entities is not None
    for i, r in enumerate(recs):
        if table.counts[i]:
            assert (table.entities[i] >= 0).any() and (table.tokens[i, table.counts[i]:] == 0).all()
        else:
            assert not np.any(table.tokens[i])
    prov = stores["video"].provenance
    assert prov.corpus_fingerprint == store.file_fingerprint(demo_corpus / "corpus.jsonl")
    assert prov.preprocessing["fps"] == 1.0 and prov.backbone == "open_clip:tiny"
    manifest = store.read_manifest(out)
    assert manifest["n_items"] == 32 and manifest["config"]["shard_size"] == 8


def test_resume_skips_finished_shards_and_redoes_lost_ones(extracted, demo_corpus, tiny_config, tmp_path):
    import ray

    from scalemm.extract.job import run_extraction

    out, _ = extracted
    work = tmp_path / "feats"
    shutil.copytree(out, work)
    before = {m: store.open_modality(work, m).load() for m in ("image", "audio")}
    # a killed run: shard 2 was in flight (its commit marker and one file missing), a temp file left over
    (work / "failures" / "shard-00002.jsonl").unlink()
    (work / "image" / "shard-00002.h5").unlink()
    (work / "audio" / "shard-00002.h5.tmp123").write_bytes(b"partial")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        again = run_extraction(demo_corpus / "corpus.jsonl", demo_corpus, work, tiny_config)
        assert (again.shards_written, again.shards_skipped) == (1, 3)
        after = {m: store.open_modality(work, m).load() for m in ("image", "audio")}
        for m in before:
            assert after[m].ids == before[m].ids
            assert np.array_equal(after[m].tokens, before[m].tokens)
        assert (work / "failures.jsonl").read_text() == (out / "failures.jsonl").read_text()
        nothing = run_extraction(demo_corpus / "corpus.jsonl", demo_corpus, work, tiny_config)
        assert (nothing.shards_written, nothing.shards_skipped) == (0, 4)
        # a different config into the same directory is refused, and nothing is overwritten
        from dataclasses import replace
        with pytest.raises(store.StoreError, match="another run"):
            run_extraction(demo_corpus / "corpus.jsonl", demo_corpus, work, replace(tiny_config, video_max_frames=2))
    finally:
        ray.shutdown()
    assert store.read_manifest(work)["config"]["video_max_frames"] == tiny_config.video_max_frames


def test_pool_plan_leaves_a_cpu_to_decode_and_splits_small_nodes() -> None:
    from scalemm.extract.config import ExtractConfig
    from scalemm.extract.job import pool_plan

    cfg = ExtractConfig()
    for cpus in (1.0, 2.0, 4.0, 16.0):
        p = pool_plan(cpus, 0.0, cfg)
        # the actors never hold every CPU: the decode tasks always have one
        assert p["actors"] * p["cpus"] <= max(cpus - 1, 0.5) + 1e-9, (cpus, p)
        assert p["threads"] >= 1 and p["gpus"] == 0.0
    two = pool_plan(2.0, 0.0, cfg)  # one single-threaded actor per core on half a CPU each
    assert (two["actors"], two["cpus"], two["threads"]) == (2, 0.5, 1)
    assert pool_plan(16.0, 0.0, cfg)["actors"] == 15
    alone = pool_plan(2.0, 0.0, ExtractConfig(num_actors=1))  # asked for: one actor, all cores
    assert (alone["actors"], alone["threads"]) == (1, 2)
    gpu = pool_plan(8.0, 2.0, cfg)
    assert (gpu["actors"], gpu["gpus"]) == (2, 1.0)
    with pytest.raises(RuntimeError, match="no GPU"):
        pool_plan(8.0, 0.0, ExtractConfig(use_gpu="yes"))


def test_pool_on_several_nodes_leaves_each_node_room_to_decode() -> None:
    from scalemm.extract.config import ExtractConfig
    from scalemm.extract.job import node_pool_plan

    two = node_pool_plan([1.0, 1.0], [0.0, 0.0], ExtractConfig())  # a head and a worker node, 1 CPU each
    assert (two["actors"], two["cpus"], two["threads"], two["decode_cpus"]) == (2, 0.5, 1, 0.5)
    one = node_pool_plan([2.0], [0.0], ExtractConfig())  # one 2-CPU node: as pool_plan, a whole CPU to decode
    assert (one["actors"], one["cpus"], one["threads"], one["decode_cpus"]) == (2, 0.5, 1, 1.0)
    big = node_pool_plan([16.0, 8.0], [0.0, 0.0], ExtractConfig())  # the smaller node's pool on each
    assert big["actors"] == 14 and big["decode_cpus"] == 1.0


def test_the_scan_of_byte_ranges_reads_what_read_corpus_reads(demo_corpus, tmp_path) -> None:
    """Any split of the file into ranges gives the products of read_corpus, with their lines,
    byte ranges that hold their records, and the same bad records (duplicates are the plan's)."""
    from scalemm.corpus import parse_jsonl_line, read_corpus
    from scalemm.extract.scan import corpus_chunks, scan_chunk

    lines = (demo_corpus / "corpus.jsonl").read_bytes().splitlines(keepends=True)
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"".join(lines[:5] + [b"\n", b"{not json\n"] + lines[5:] + [lines[0].rstrip(b"\n")]))
    whole = read_corpus(path)
    for size in (1, 300, 5000, 1 << 20):
        chunks, sha = corpus_chunks(path, size)
        assert sha == store.file_fingerprint(path) and chunks[0][0] == 0 and chunks[-1][1] == path.stat().st_size
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        parts = [scan_chunk(str(path), a, b, line, str(demo_corpus)) for a, b, line in chunks]
        ids = [i for p in parts for i in p["products"].column("id").to_pylist()]
        assert ids[:-1] == [p.id for p in whole.products]  # the last line repeats the first id (a duplicate)
        assert [(w, e) for p in parts for _, w, e in p["bad"]] == [(b.where, b.error) for b in whole.bad[:1]]
        raw, by_line = path.read_bytes(), {p.line: p.id for p in whole.products}
        for p in parts:
            t = p["products"]
            for line, off, n in zip(*(t.column(c).to_pylist() for c in ("line", "offset", "length"))):
                assert parse_jsonl_line(raw[off:off + n], line).id == by_line.get(line, whole.products[0].id)
    fps = [f for p in parts for f in p["products"].column("fingerprint").to_pylist()]
    assert fps[0] == fps[-1] and len(set(fps[:-1])) == len(fps) - 1  # same record, same fingerprint


def test_a_failed_job_waits_for_its_killed_writers_and_leaves_no_temporary_file(tmp_path) -> None:
    """A failed job kills its model actors; one may be writing the next shard (handed two at a
    time). The job waits for the writer's process to end, then deletes what it left; a writer
    still alive after the wait keeps its file (the rerun removes it)."""
    import subprocess
    import sys
    import threading
    import time

    from scalemm.extract.job import clean_after_kill

    out = tmp_path / "feats"
    (out / "image").mkdir(parents=True)
    committed = out / "image" / "shard-00001.h5"
    committed.write_bytes(b"whole")
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        half = out / "image" / f"shard-00002.h5.tmp{writer.pid}"
        half.write_bytes(b"half")
        assert clean_after_kill(out, wait=0.3) == [half] and half.exists()  # alive: kept
        threading.Timer(0.5, lambda: (writer.kill(), writer.wait())).start()  # the kill lands while the job waits
        t0 = time.monotonic()
        assert clean_after_kill(out, wait=20) == []
        assert 0.4 < time.monotonic() - t0 < 20
        assert not half.exists() and committed.read_bytes() == b"whole"
    finally:
        writer.kill()
        writer.wait()
