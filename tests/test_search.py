"""pipelines/search.py on a small catalogue (search_helpers: real media, the real extraction job
with the offline backbones, SCALE trained, the catalogue index and its record): a catalogue
product found from its own picture and title, a new product's neighbours in its category, the
refusals (another checkpoint, a missing index, an unreadable record); and the pieces that need
no catalogue."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import search_helpers
from cli_output import last_json


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> dict:
    return search_helpers.build(tmp_path_factory.getbasetemp() / "search-catalogue")


@pytest.fixture(scope="module")
def searcher(cat):
    from scalemm.search.engine import Searcher

    return Searcher(cat["eval"], cat["run"])


# ---------------------------------------------------------------------------- no catalogue needed

def test_parse_and_format_table() -> None:
    from scalemm.search.engine import Hit, QueryError, format_table, parse_table_args

    assert parse_table_args(["brand=Acme", "capacity = 1.7 L"]) == [("brand", "Acme"), ("capacity", "1.7 L")]
    with pytest.raises(QueryError, match="key=value"):
        parse_table_args(["brand"])
    text = format_table([Hit(1, "p1", "Acme kettle " * 10, "kettle", 0.98765)])
    assert text.splitlines()[0].split() == ["rank", "id", "title", "label", "score"]
    assert "p1" in text and "kettle" in text and "0.9877" in text and "…" in text


def test_locate_refuses_a_folder_without_index(tmp_path) -> None:
    from scalemm.evaluate.catalogue import CatalogueRunError
    from scalemm.search.engine import locate

    with pytest.raises(CatalogueRunError, match="no catalogue index"):
        locate(tmp_path)


def test_check_added_refuses_other_checkpoints(tmp_path) -> None:
    from scalemm.embedfile import save_embeddings
    from scalemm.evaluate.catalogue import RECORD_FILE, RECORD_FORMAT, CatalogueRunError, check_added

    rec = {"format": RECORD_FORMAT, "weights_sha256": "a" * 64, "run": "/runs/seed-0", "seed": 0, "step": 12}
    (tmp_path / RECORD_FILE).write_text(json.dumps(rec))

    def npz(name: str, **extra) -> Path:
        return save_embeddings(tmp_path / name, ["n1"], np.ones((1, 4), np.float32), ["c"], [""], **extra)

    assert check_added(tmp_path, npz("ok.npz", weights_sha256=np.array("a" * 64)))["seed"] == 0
    for f in (npz("other.npz", weights_sha256=np.array("b" * 64)), npz("none.npz")):
        with pytest.raises(CatalogueRunError, match=f"{f.name} was embedded by .*not by the catalogue's .*seed 0"):
            check_added(tmp_path, f)
    with pytest.raises(CatalogueRunError, match="does not say which run built it"):
        check_added(tmp_path / "nothing", npz("ok.npz", weights_sha256=np.array("a" * 64)))


def test_a_catalogue_refuses_vectors_of_another_embedding_rule(tmp_path) -> None:
    """The same checkpoint embeds differently under another embedding rule: products embedded by
    this version are refused by a catalogue built under an older rule (a record without one: rule
    1), and so is a search of it; a catalogue of this rule takes them."""
    from scalemm.embedfile import save_embeddings
    from scalemm.evaluate.catalogue import RECORD_FILE, RECORD_FORMAT, CatalogueRunError, check_added, check_checkpoint
    from scalemm.fuse.model import EMBEDDING_RULE

    assert EMBEDDING_RULE > 1
    new = save_embeddings(tmp_path / "new.npz", ["n1"], np.ones((1, 4), np.float32), ["c"], [""],
                          weights_sha256=np.array("a" * 64), embedding_rule=np.array(EMBEDDING_RULE))
    old = save_embeddings(tmp_path / "old.npz", ["n1"], np.ones((1, 4), np.float32), ["c"], [""],
                          weights_sha256=np.array("a" * 64))
    rec = {"format": RECORD_FORMAT, "weights_sha256": "a" * 64, "run": "/runs/seed-0", "seed": 0, "step": 12}
    (tmp_path / RECORD_FILE).write_text(json.dumps(rec))  # built before the rule was recorded
    with pytest.raises(CatalogueRunError, match=f"embedding rule 1, and .*new.npz was embedded under rule {EMBEDDING_RULE}"):
        check_added(tmp_path, new)
    assert check_added(tmp_path, old)["seed"] == 0
    with pytest.raises(CatalogueRunError, match=f"rule 1, and this version of the code embeds under rule {EMBEDDING_RULE}"):
        check_checkpoint(rec, tmp_path / "run")
    (tmp_path / RECORD_FILE).write_text(json.dumps({**rec, "embedding_rule": EMBEDDING_RULE}))
    assert check_added(tmp_path, new)["seed"] == 0
    with pytest.raises(CatalogueRunError, match=f"rule {EMBEDDING_RULE}, and .*old.npz was embedded under rule 1"):
        check_added(tmp_path, old)


def test_single_product_rows_are_the_store_rows(demo_corpus, tiny_config) -> None:
    """A product featurized alone, from loose files, has the rows a store holds: the same
    shapes, counts and bits whatever else is encoded beside it."""
    from scalemm.corpus import read_corpus
    from scalemm.extract.single import SingleExtractor, product

    ex = SingleExtractor(tiny_config, "cpu")
    ps = [p for p in read_corpus(demo_corpus / "corpus.jsonl").products if p.image and p.title][:3]
    rows, _ = ex.rows(ps, demo_corpus)
    alone, failures = ex.rows([product("q", ps[1].title, None, demo_corpus / ps[1].image)])
    for m, d in rows.items():
        assert d.tokens.shape[1:] == (ex.provenance[m].max_tokens, ex.provenance[m].dim) and d.tokens.dtype == np.float16
    for m in ("image", "text"):
        assert alone[m].counts[0] == rows[m].counts[1] > 0
        np.testing.assert_array_equal(alone[m].tokens[0], rows[m].tokens[1])
        np.testing.assert_array_equal(alone[m].pooled[0], rows[m].pooled[1])
    assert all(alone[m].counts[0] == 0 for m in ("table", "video", "audio")) and failures == []


# ---------------------------------------------------------------------------- on the catalogue

@pytest.mark.slow
def test_own_picture_and_title_find_the_product(cat, searcher) -> None:
    from scalemm.extract.single import product

    ps = search_helpers.queryable(cat)
    assert len(ps) >= 40
    found, failures = searcher.by_media([product(p.id, p.title, None, cat["corpus"] / p.image) for p in ps], 5)
    assert failures == []
    first = [hits[0].id == p.id for hits, p in zip(found, ps)]
    assert np.mean(first) >= 0.99, [(p.id, [h.id for h in hits]) for hits, p, ok in zip(found, ps, first) if not ok]
    assert all(0.0 < hits[0].score <= 1.0001 for hits in found)


@pytest.mark.slow
def test_in_process_rows_equal_the_extracted_store(cat, searcher) -> None:
    """Featurized in this process, catalogue products get the very rows the Ray job wrote."""
    from scalemm.store import open_stores

    ps = search_helpers.queryable(cat)[:6]
    rows, _ = searcher.extractor.rows(ps, cat["corpus"])
    for m, st in open_stores(cat["feats"]).items():
        stored = st.load()
        at = [stored.ids.index(p.id) for p in ps]
        np.testing.assert_array_equal(rows[m].counts, stored.counts[at])
        np.testing.assert_array_equal(rows[m].tokens, stored.tokens[at])
        np.testing.assert_array_equal(rows[m].pooled, stored.pooled[at])
        assert rows[m].counts.any() or m == "audio", m
    # so a product given with all its media is embedded as the catalogue embedded it
    np.testing.assert_allclose(searcher.model.embed(rows)[0], searcher.catalogue.vector(ps[0].id), atol=1e-5)


@pytest.mark.slow
def test_new_product_neighbours_share_its_category(cat, searcher) -> None:
    """Products held out of the catalogue, given by a picture and a title only: the neighbours
    of each are mostly of its category (it has at least 5 products in the catalogue)."""
    from scalemm.corpus import read_corpus
    from scalemm.extract.single import product

    every = {p.id: p for p in read_corpus(cat["corpus"] / "corpus.jsonl").products}
    held = [every[i] for i in cat["held"]]
    assert len(held) >= 3 and all(cat["label_counts"][p.label] >= 5 for p in held)
    assert not set(cat["held"]) & set(searcher.catalogue.ids)
    found, _ = searcher.by_media([product(p.id, p.title, None, cat["corpus"] / p.image) for p in held], 5)
    same = [sum(h.label == p.label for h in hits) for hits, p in zip(found, held)]
    # measured: 5, 4 and 3 of 5 (speaker, desk lamp, sunglasses: its title says "EYEWEAR")
    assert all(s >= 3 for s in same), same


@pytest.mark.slow
def test_cli_by_id_and_by_media(cat, run_cli) -> None:
    from scalemm.corpus import read_corpus

    p = search_helpers.queryable(cat)[0]
    rc, out, err, _ = run_cli("search.py", "--index", str(cat["eval"]), "--checkpoint", str(cat["run"]),
                              "--id", p.id, "--k", "3", "--json")
    assert rc == 0, err
    res = last_json(out)
    assert res["query"] == {"id": p.id} and len(res["results"]) == 3
    assert p.id not in [r["id"] for r in res["results"]] and [r["rank"] for r in res["results"]] == [1, 2, 3]
    corpus = {q.id: q for q in read_corpus(cat["corpus"] / "corpus.jsonl").products}
    assert all(r["label"] == corpus[r["id"]].label and r["title"] == (corpus[r["id"]].title or "")
               for r in res["results"])
    # a new product's picture and title, as a table; the index given as EVAL/index/catalogue
    rc, out, err, _ = run_cli("search.py", "--index", str(cat["eval"] / "index" / "catalogue"), "--checkpoint",
                              str(cat["run"]), "--image", str(cat["corpus"] / p.image), "--title", p.title,
                              "--table", "brand=Acme", "--k", "4")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "id", "title", "label", "score"] and len(lines) == 5
    assert lines[1].split()[:2] == ["1", p.id]


@pytest.mark.slow
def test_embed_builds_the_catalogue_search_reads(cat, run_cli, tmp_path) -> None:
    """``pipelines/embed.py --index DIR`` builds the catalogue index an evaluation builds (every
    product, the run recorded): search by id on it finds the same neighbours, and it refuses
    another checkpoint the same way."""
    rc, out, err, _ = run_cli("embed.py", "--run", str(cat["run"]), "--features", str(cat["feats"]),
                              "--index", str(tmp_path / "cat"), "--no-progress")
    assert rc == 0, err
    assert last_json(out)["items"] == sum(cat["label_counts"].values())
    p = search_helpers.queryable(cat)[0]
    got = []
    for index in (cat["eval"], tmp_path / "cat"):
        rc, out, err, _ = run_cli("search.py", "--index", str(index), "--checkpoint", str(cat["run"]), "--id", p.id,
                                  "--k", "5", "--json")
        assert rc == 0, err
        got.append([(r["id"], round(r["score"], 4)) for r in last_json(out)["results"]])
    assert got[0] == got[1] and len(got[0]) == 5


@pytest.mark.slow
def test_refusals(cat, run_cli, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from scalemm.fuse.checkpoint import resolve_weights

    def search(index: Path, ckpt: Path, *extra: str) -> tuple[int, str]:
        rc, _, err, _ = run_cli("search.py", "--index", str(index), "--checkpoint", str(ckpt), *extra)
        return rc, err

    # another checkpoint: the same model with one weight changed
    w = resolve_weights(cat["run"])
    with safe_open(str(w), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(w))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata=meta)
    rc, err = search(cat["eval"], tmp_path / "other.safetensors", "--title", "kettle")
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: the catalogue was built by run") and "seed 0" in err
    # the folder of seed-*/ runs that evaluate.py took: the catalogue's seed is used
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "seed-0").symlink_to(cat["run"])
    assert search(cat["eval"], tmp_path / "runs", "--id", "p000001")[0] == 0
    # a missing index
    rc, err = search(tmp_path / "nothing", cat["run"], "--id", "p000001")
    assert rc != 0 and err.startswith("error: no catalogue index under") and len(err.strip().splitlines()) == 1
    # a catalogue whose store's backbones are not the model's: the query's features are refused
    shutil.copytree(cat["eval"], tmp_path / "eval")
    record = tmp_path / "eval" / "index" / "catalogue" / "provenance.json"
    rec = json.loads(record.read_text())
    rec["extract_config"]["image"] = "open_clip:tiny"
    record.write_text(json.dumps(rec))
    rc, err = search(tmp_path / "eval", cat["run"], "--title", "kettle")
    assert rc != 0 and "the image store does not fit the model" in err and len(err.strip().splitlines()) == 1
    # an unreadable record
    (tmp_path / "eval" / "index" / "catalogue" / "provenance.json").write_text("{not json")
    rc, err = search(tmp_path / "eval", cat["run"], "--id", "p000001")
    assert rc != 0 and "provenance.json is unreadable" in err and len(err.strip().splitlines()) == 1
    # an index without a record (built before search existed)
    (tmp_path / "eval" / "index" / "catalogue" / "provenance.json").unlink()
    rc, err = search(tmp_path / "eval", cat["run"], "--id", "p000001")
    assert rc != 0 and "does not say which run built it" in err
    # an unknown id, a missing picture, no query at all
    rc, err = search(cat["eval"], cat["run"], "--id", "nope")
    assert rc != 0 and "'nope' is not in the catalogue" in err
    rc, err = search(cat["eval"], cat["run"], "--image", str(tmp_path / "none.jpg"))
    assert rc != 0 and "is not a file" in err
    rc, err = search(cat["eval"], cat["run"])
    assert rc == 2 and "give --id PID" in err
    # a picture that does not decode and nothing else: nothing to search with
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    rc, err = search(cat["eval"], cat["run"], "--image", str(tmp_path / "bad.jpg"))
    assert rc != 0 and "nothing of the query" in err and "not a decodable image" in err


def test_help_says_what_it_does(run_cli) -> None:
    for script in ("search.py", "serve.py"):
        rc, out, _, _ = run_cli(script, "--help")
        assert rc == 0 and "--index EVAL --checkpoint RUN" in out and "python pipelines/" + script in out


@pytest.mark.slow
def test_added_products_show_their_titles(cat, run_cli, tmp_path) -> None:
    """Products extracted into a store of their own, embedded with the catalogue's run and added
    with ``--add-products``: search finds one from its own picture and title at rank 1, with the
    title of its own store (the embeddings file names the store; the catalogue's record keeps it)."""
    import ray

    from scalemm.corpus import read_corpus
    from scalemm.extract.config import load_config
    from scalemm.extract.job import run_extraction

    corpus = cat["corpus"]
    lines = [ln for ln in (corpus / "corpus.jsonl").read_text().splitlines() if json.loads(ln)["id"] in cat["held"]]
    (tmp_path / "new.jsonl").write_text("\n".join(lines) + "\n")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        run_extraction(tmp_path / "new.jsonl", corpus, tmp_path / "feats",
                       load_config(search_helpers.ROOT / "configs" / "offline.yaml"))
    finally:
        ray.shutdown()
    rc, _, err, _ = run_cli("embed.py", "--run", str(cat["run"]), "--features", str(tmp_path / "feats"),
                            "--out", str(tmp_path / "new.npz"), "--no-progress")
    assert rc == 0, err
    shutil.copytree(cat["eval"], tmp_path / "eval")
    rc, _, err, _ = run_cli("evaluate.py", "--out", str(tmp_path / "eval"), "--add-products", str(tmp_path / "new.npz"))
    assert rc == 0, err
    rec = json.loads((tmp_path / "eval" / "index" / "catalogue" / "provenance.json").read_text())
    assert rec["added_features"] == [str((tmp_path / "feats").resolve())]
    p = read_corpus(tmp_path / "new.jsonl").products[0]
    rc, out, err, _ = run_cli("search.py", "--index", str(tmp_path / "eval"), "--checkpoint", str(cat["run"]),
                              "--image", str(corpus / p.image), "--title", p.title, "--k", "3", "--json")
    assert rc == 0, err
    top = last_json(out)["results"][0]
    assert (top["id"], top["title"], top["label"]) == (p.id, p.title, p.label)
