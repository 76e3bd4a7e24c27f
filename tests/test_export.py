"""Parquet out (pipelines/export.py): an evaluation's catalogue, written by the functions the
evaluation writes it with (evaluate/catalogue.py) over a small synthetic store, exported and
read back with pyarrow, pandas and Ray Data: the same ids and vectors, labels, titles, pooled
vectors and the run's provenance; products added to the index later are exported too; a
missing or unreadable catalogue is one error line, exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cli_output import last_json
from fuse_helpers import tiny_config, write_synthetic_store

N, D = 40, 24
pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> dict:
    """FEATS (3 shards, modalities missing here and there, a corpus with some titles), a run
    (an untrained model's checkpoint) and EVAL: the catalogue's vectors, index and metrics.json."""
    import torch

    from scalemm.evaluate.catalogue import CATALOGUE_DIR, VECTORS_FILE, index_catalogue, write_vectors
    from scalemm.evaluate.embeddings import l2_normalize
    from scalemm.fuse.checkpoint import save_checkpoint
    from scalemm.fuse.model import ScaleModel
    from scalemm.fuse.reader import FeatureDataset
    from scalemm.store import write_manifest

    base = tmp_path_factory.mktemp("export")
    feats = base / "feats"
    info = write_synthetic_store(feats, n_items=N, shards=3, missing=0.25, seed=2)
    corpus = base / "corpus.jsonl"
    titles = {i: f"title of {i}" for i in info["ids"][::2]}
    corpus.write_text("".join(json.dumps({"id": i, "title": titles.get(i)}) + "\n" for i in info["ids"]))
    write_manifest(feats, {"corpus": str(corpus), "corpus_fingerprint": "0" * 64})
    ds = FeatureDataset(feats)
    cfg = tiny_config()
    torch.manual_seed(0)
    model = ScaleModel(cfg, {m: (s.max_tokens, s.dim) for m, s in ds.shapes.items()})
    run = base / "run"
    save_checkpoint(run, 0, model, {}, cfg, ds.provenance)
    x = l2_normalize(np.random.default_rng(0).normal(size=(N, D)))
    ev = base / "eval"
    write_vectors(ev / CATALOGUE_DIR / VECTORS_FILE, N, D, lambda w: (w(x[:15]), w(x[15:])))
    index = index_catalogue(x, list(ds.ids), ev / "index" / "catalogue")
    (ev / "metrics.json").write_text(json.dumps({"runs": {"scale": [str(run)]}, "seeds": [0], "embedding_dim": D,
                                                 "index": {"type": index["type"]}}))
    return {"feats": feats, "eval": ev, "run": run, "ids": list(ds.ids), "labels": list(ds.labels),
            "instances": list(ds.instances), "vectors": x, "titles": titles}


def _store_pooled(feats: Path, ids: list[str]) -> dict[str, dict[str, np.ndarray | None]]:
    from scalemm.store import open_stores

    out = {}
    for m, s in open_stores(feats).items():
        d = s.load()
        out[m] = {i: (d.pooled[r] if d.counts[r] > 0 else None) for r, i in enumerate(d.ids)}
    return out


def test_export_round_trips_through_pyarrow_pandas_and_ray_data(evaluation, run_cli, tmp_path):
    import pandas as pd
    import ray

    out = tmp_path / "out" / "catalogue.parquet"
    rc, stdout, err, _ = run_cli("export.py", "--index", str(evaluation["eval"]), "--pooled", str(evaluation["feats"]),
                                 "--out", str(out), "--batch-rows", "7")
    assert rc == 0, err
    summary = last_json(stdout)
    assert summary["products"] == N and summary["embedding_dim"] == D and summary["titles"] == N // 2
    assert [p.name for p in out.parent.iterdir()] == ["catalogue.parquet"]  # no temporary file left
    ids, x = evaluation["ids"], evaluation["vectors"]

    f = pq.ParquetFile(out)
    assert f.metadata.num_row_groups == -(-N // 7)
    t = f.read()
    assert t.column("id").to_pylist() == ids
    assert str(t.schema.field("vector").type) == f"fixed_size_list<element: float>[{D}]"
    assert np.array_equal(np.stack(t.column("vector").to_numpy(zero_copy_only=False)), x)
    assert t.column("label").to_pylist() == evaluation["labels"]
    assert t.column("instance").to_pylist() == evaluation["instances"]
    assert t.column("title").to_pylist() == [evaluation["titles"].get(i) for i in ids]
    pooled = _store_pooled(evaluation["feats"], ids)
    assert sorted(c.removeprefix("pooled_") for c in t.column_names if c.startswith("pooled_")) == sorted(pooled)
    for m, want in pooled.items():
        got = t.column(f"pooled_{m}").to_pylist()
        assert sum(v is None for v in got) == sum(want[i] is None for i in ids) > 0, m
        for i, g in zip(ids, got):
            assert (g is None) == (want[i] is None) and (g is None or np.array_equal(np.float32(g), want[i])), (m, i)
    meta = json.loads(t.schema.metadata[b"scalemm"])
    assert meta["run"] == str(evaluation["run"]) and meta["seed"] == 0 and meta["embedding_dim"] == D
    assert Path(meta["checkpoint"]).parent.parent == evaluation["run"] and meta["config"]["d_model"] == 32
    assert meta["features"] == str(evaluation["feats"].resolve()) and meta["products"] == N

    df = pd.read_parquet(out)
    assert df["id"].tolist() == ids
    assert np.array_equal(np.stack(df["vector"].to_numpy()).astype(np.float32), x)

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        rows = ray.data.read_parquet(str(out)).take_all()
    finally:
        ray.shutdown()
    got = {r["id"]: np.asarray(r["vector"], np.float32) for r in rows}
    assert sorted(got) == sorted(ids)
    assert all(np.array_equal(got[i], x[k]) for k, i in enumerate(ids))


def test_products_added_to_the_index_are_exported_too(evaluation, run_cli, tmp_path):
    from scalemm.evaluate.embeddings import l2_normalize
    from scalemm.evaluate.index import add_to_index

    ev = tmp_path / "eval"
    shutil.copytree(evaluation["eval"], ev)
    new = l2_normalize(np.random.default_rng(1).normal(size=(3, D)))
    add_to_index(ev / "index" / "catalogue", new, ["n1", "n2", "n3"])
    out = tmp_path / "c.parquet"
    rc, stdout, err, _ = run_cli("export.py", "--index", str(ev / "index" / "catalogue"), "--features",
                                 str(evaluation["feats"]),
                                 "--out", str(out), "--batch-rows", "16")
    assert rc == 0, err
    t = pq.read_table(out)
    assert t.num_rows == N + 3 and t.column("id").to_pylist()[-3:] == ["n1", "n2", "n3"]
    v = np.stack(t.column("vector").to_numpy(zero_copy_only=False))
    assert np.array_equal(v[:N], evaluation["vectors"]) and np.allclose(v[N:], new, atol=1e-6)
    assert t.column("label").to_pylist()[-3:] == [None] * 3 and t.column("label").to_pylist()[:N] == evaluation["labels"]
    assert not [c for c in t.column_names if c.startswith("pooled_")]
    assert json.loads(t.schema.metadata[b"scalemm"])["added_after_evaluation"] == 3


def _error(run_cli, *args: str) -> str:
    rc, stdout, err, _ = run_cli("export.py", *args)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    return lines[0]


def test_a_missing_or_unreadable_catalogue_is_one_error_line(evaluation, run_cli, tmp_path):
    out = str(tmp_path / "x.parquet")
    assert "is not a directory" in _error(run_cli, "--index", str(tmp_path / "nope"), "--out", out)
    assert "no catalogue index" in _error(run_cli, "--index", str(evaluation["feats"]), "--out", out)
    ev = tmp_path / "eval"
    shutil.copytree(evaluation["eval"], ev)
    (ev / "catalogue" / "vectors.npy").write_bytes(b"\x93NUMPY garbage")
    assert "vectors.npy is unreadable" in _error(run_cli, "--index", str(ev), "--out", out)
    shutil.copy(evaluation["eval"] / "catalogue" / "vectors.npy", ev / "catalogue" / "vectors.npy")
    (ev / "index" / "catalogue" / "ids.json").write_text("[1, 2")
    assert "ids.json is unreadable" in _error(run_cli, "--index", str(ev), "--out", out)
    shutil.copy(evaluation["eval"] / "index" / "catalogue" / "ids.json", ev / "index" / "catalogue" / "ids.json")
    (ev / "metrics.json").unlink()
    assert "did not finish" in _error(run_cli, "--index", str(ev), "--out", out)
    assert "pass --features" in _error(run_cli, "--index", str(evaluation["eval"]), "--pooled", "--out", out)
    other = tmp_path / "other"
    write_synthetic_store(other, n_items=12, shards=1, seed=4)
    assert "hold 12 products, the catalogue 40" in _error(run_cli, "--index", str(evaluation["eval"]),
                                                          "--features", str(other), "--out", out)
    assert not Path(out).exists()


def test_help_says_what_it_does_with_an_example(run_cli):
    rc, stdout, _, _ = run_cli("export.py", "--help")
    assert rc == 0 and "Parquet" in stdout and "python pipelines/export.py --index EVAL" in stdout
