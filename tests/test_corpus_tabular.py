"""CSV and Parquet catalogues in: the readers of scalemm/corpus.py (column mapping, extra
columns into the table, excluded columns, bad rows at their row numbers, streaming), and
(slow) a CSV and a Parquet catalogue extracted to stores equal to the same products as JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalemm.corpus import (BadRecord, CorpusError, Product, TableFormat, corpus_format, iter_csv, iter_parquet,
                            parse_columns, read_corpus)

CSV = """sku,name,cat,img,colour,notes,weight
a1,Red kettle,kettle,images/a1.jpg,red,internal,1.5
a2,"Blue, big ""XL"" mug",mug,,blue,,
,no id here,mug,,green,x,
a4,"two
lines",toaster,images/a4.jpg,,,2
a5,too,many,cells,a,b,c,d
a6,fine,kettle,,white,,
"""
MAPPING = {"id": "sku", "title": "name", "label": "cat", "image": "img"}


@pytest.fixture
def catalogue_csv(tmp_path: Path) -> Path:
    path = tmp_path / "catalogue.csv"
    path.write_text(CSV)
    return path


def _expected() -> list[Product | BadRecord]:
    return [
        Product("a1", "kettle", "", "Red kettle", [("colour", "red"), ("weight", "1.5")], "images/a1.jpg", line=1),
        Product("a2", "mug", "", 'Blue, big "XL" mug', [("colour", "blue")], line=2),
        BadRecord("row 3", "missing 'id'"),
        Product("a4", "toaster", "", "two\nlines", [("weight", "2")], "images/a4.jpg", line=4),
        BadRecord("row 5", "8 cells where the header has 7"),
        Product("a6", "kettle", "", "fine", [("colour", "white")], line=6),
    ]


def test_csv_columns_mapped_extra_columns_in_the_table_excluded_left_out(catalogue_csv):
    got = list(iter_csv(catalogue_csv, MAPPING, exclude=["notes"]))
    assert got == _expected()


def test_csv_read_in_small_blocks_gives_the_same_products(catalogue_csv):
    whole = list(iter_csv(catalogue_csv, MAPPING, exclude=["notes"]))
    for block in (70, 100, 256):
        assert list(iter_csv(catalogue_csv, MAPPING, exclude=["notes"], block_bytes=block)) == whole, block


def test_parquet_row_groups_streamed_typed_cells_as_text_bad_values_recorded(tmp_path):
    t = pa.table({"id": ["p1", None, "p3", "p4", "p5"],
                  "title": ["one", "two", None, "four", "five"],
                  "image": ["i/1.jpg", None, None, None, None],
                  "label": ["a", "b", "a", None, "b"],
                  "price": [1.5, 2.0, None, 4.25, 5.0],
                  "stock": pa.array([3, None, 0, 1, 2], pa.int64()),
                  "tags": [["x", "y"], [], None, ["z"], None],
                  "secret": ["s"] * 5})
    path = tmp_path / "cat.parquet"
    pq.write_table(t, path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 3
    whole = list(iter_parquet(path, exclude=["secret"]))
    assert whole == [
        Product("p1", "a", "", "one", [("price", "1.5"), ("stock", "3"), ("tags", "x, y")], "i/1.jpg", line=1),
        BadRecord("row 2", "missing 'id'"),
        Product("p3", "a", "", None, [("stock", "0")], line=3),
        Product("p4", "", "", "four", [("price", "4.25"), ("stock", "1"), ("tags", "z")], line=4),
        Product("p5", "b", "", "five", [("price", "5.0"), ("stock", "2")], line=5),
    ]
    for rows in (1, 2, 3):
        assert list(iter_parquet(path, exclude=["secret"], batch_rows=rows)) == whole
    # a bad value (an image that is not a path) is a bad record at its row; ids may be integers
    pq.write_table(pa.table({"sku": [10, 11], "title": ["t", "u"], "image": pa.array([None, 7], pa.int64())}),
                   tmp_path / "ints.parquet")
    got = list(iter_parquet(tmp_path / "ints.parquet", {"id": "sku"}))
    assert got[0] == Product("10", title="t", line=1)
    assert got[1] == BadRecord("row 2", "image must be a path string, got int")


def test_a_mapped_table_column_keeps_its_pairs_before_the_extra_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,specs,brand\nq1,size#:#L#;#fit#:#slim,Acme\n")
    (p,) = iter_csv(path, {"table": "specs"})
    assert p.table == [("size", "L"), ("fit", "slim"), ("brand", "Acme")]


def test_format_by_suffix_mapping_kept_and_whole_file_errors(catalogue_csv, tmp_path):
    fmt = corpus_format(catalogue_csv, TableFormat("auto", MAPPING, ["notes"]))
    assert fmt == "csv" and isinstance(fmt, TableFormat) and fmt.columns == MAPPING and fmt.exclude == ("notes",)
    assert corpus_format(catalogue_csv) == "csv"
    assert parse_columns("id=sku, title = name") == {"id": "sku", "title": "name"}
    for bad, why in (("id", "FIELD=COLUMN"), ("colour=c", "unknown field"), ("id=a,id=b", "mapped twice")):
        with pytest.raises(CorpusError, match=why):
            parse_columns(bad)
    with pytest.raises(CorpusError, match="no 'id' column"):
        list(iter_csv(catalogue_csv))  # no column is named id, and none is mapped to it
    with pytest.raises(CorpusError, match="no column 'nope'"):
        list(iter_csv(catalogue_csv, {"id": "sku", "title": "nope"}))
    with pytest.raises(CorpusError, match="no column 'gone'"):
        list(iter_csv(catalogue_csv, MAPPING, exclude=["gone"]))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match="not a readable Parquet file"):
        list(iter_parquet(junk))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"id": "x"}\n')
    with pytest.raises(CorpusError, match="for CSV or Parquet"):
        corpus_format(jsonl, TableFormat("auto", {"id": "sku"}))
    # read_corpus reads a catalogue whose columns are named as the fields
    named = tmp_path / "named.csv"
    named.write_text("id,title,label\nz1,Zed,zz\nz1,again,zz\n")
    c = read_corpus(named)
    assert [p.id for p in c.products] == ["z1"] and "duplicate id" in c.bad[0].error


# ----------------------------------------------------------------------------- extraction end to end

def _demo_products(demo_corpus: Path, n: int = 16) -> list[Product]:
    """The demo corpus' first ``n`` products (two shards of configs/tiny.yaml; corrupt media among them)."""
    from scalemm.corpus import iter_jsonl

    return [p for p in iter_jsonl(demo_corpus / "corpus.jsonl") if isinstance(p, Product)][:n]


def _as_rows(products: list[Product]) -> list[dict]:
    """The products as catalogue rows (column names of a shop's export) plus a bad row and a
    column that is excluded."""
    rows = [{"sku": p.id, "category": p.label, "instance": p.instance, "name": p.title,
             "specs": "#;#".join(f"{k}#:#{v}" for k, v in p.table or []) or None,
             "img": p.image, "video": p.video, "audio": p.audio, "internal_note": f"note {i}"}
            for i, p in enumerate(products)]
    rows.insert(5, {**rows[0], "sku": None, "name": "a row without an id"})
    return rows


def _store_rows(root: Path) -> dict:
    from scalemm import store

    out = {}
    for m, s in store.open_stores(root).items():
        d = s.load()
        out[m] = {i: (d.tokens[r], d.counts[r], d.pooled[r], None if d.entities is None else d.entities[r])
                  for r, i in enumerate(d.ids)}
    return out


def _failures(root: Path) -> list[dict]:
    from scalemm import store

    return [json.loads(x) for x in (root / store.FAILURES).read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.slow
def test_csv_and_parquet_catalogues_extract_to_the_stores_of_the_same_jsonl(ray_local, demo_corpus, tiny_config,
                                                                          tmp_path, run_cli):
    import pandas as pd

    from scalemm.corpus import iter_jsonl, store_corpus
    from scalemm.evaluate.run import product_info
    from scalemm.extract.job import run_extraction

    products = _demo_products(demo_corpus)
    ref_corpus = tmp_path / "corpus.jsonl"
    ref_corpus.write_text("".join(json.dumps({"id": p.id, "label": p.label, "instance": p.instance, "title": p.title,
                                              "table": p.table, "image": p.image, "video": p.video,
                                              "audio": p.audio}) + "\n" for p in products))
    rows = _as_rows(products)
    pd.DataFrame(rows).to_csv(tmp_path / "catalogue.csv", index=False)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "catalogue.parquet", row_group_size=7)
    ref = run_extraction(ref_corpus, demo_corpus, tmp_path / "feats-jsonl", tiny_config)
    # a JSONL corpus is copied into its store as it is: titles and media paths travel with the store
    jcopy = store_corpus(tmp_path / "feats-jsonl")
    assert jcopy is not None and jcopy.parent == tmp_path / "feats-jsonl" / "corpus"
    assert jcopy.name.startswith("jsonl-") and jcopy.read_bytes() == Path(ref_corpus).read_bytes()
    rc, out, err, _ = run_cli("extract.py", "--corpus", str(tmp_path / "catalogue.csv"), "--media-root",
                              str(demo_corpus), "--out", str(tmp_path / "feats-csv"), "--config",
                              str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"),
                              "--columns", "id=sku,title=name,label=category,table=specs,image=img",
                              "--exclude-columns", "internal_note")
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1])["items"] == ref.items == len(products)
    fmt = TableFormat("parquet", {"id": "sku", "title": "name", "label": "category", "table": "specs",
                                  "image": "img"}, ["internal_note"])
    par = run_extraction(tmp_path / "catalogue.parquet", demo_corpus, tmp_path / "feats-parquet", tiny_config,
                         fmt=fmt)
    assert par.items == len(products)
    want = _store_rows(tmp_path / "feats-jsonl")
    for name in ("feats-csv", "feats-parquet"):
        got = _store_rows(tmp_path / name)
        assert got.keys() == want.keys()
        for m in want:
            assert sorted(got[m]) == sorted(want[m]), (name, m)
            for i in want[m]:
                for x, y in zip(got[m][i], want[m][i]):
                    assert (x is None and y is None) or np.array_equal(x, y), (name, m, i)
        fails = _failures(tmp_path / name)
        ref_fails = sorted((f["id"], f["modality"], f["error"]) for f in _failures(tmp_path / "feats-jsonl"))
        assert ref_fails and sorted((f["id"], f["modality"], f["error"]) for f in fails if f["id"] is not None) == ref_fails
        assert [f["error"] for f in fails if f["id"] is None] == ["row 6: missing 'id'"], name
        copies = sorted(p.name for p in (tmp_path / name / "corpus").glob("*.jsonl"))
        assert len(copies) == 1 and copies[0].startswith(name.split("-")[1] + "-"), copies
        copy = store_corpus(tmp_path / name)  # what evaluation and export read titles from
        assert copy is not None and copy.name == copies[0]
        assert [(p.id, p.title) for p in iter_jsonl(copy) if isinstance(p, Product)] == [
            (p.id, p.title) for p in products]
        # the evaluation's gallery titles come from that copy, not from the CSV with its own columns
        info = product_info(tmp_path / name)
        assert {k: v["title"] for k, v in info.items()} == {p.id: p.title or "" for p in products}, name
    again = run_extraction(tmp_path / "catalogue.parquet", demo_corpus, tmp_path / "feats-parquet", tiny_config,
                           fmt=fmt)
    assert again.shards_written == 0 and again.items == len(products)
