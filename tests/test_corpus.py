import json

import pytest

from scalemm.corpus import CorpusError, media_name_from_url, parse_table, read_corpus


def write_lines(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_jsonl_reads_products_and_reports_bad_lines(tmp_path):
    good = {"id": "a", "label": "kettle", "instance": "i1", "title": " Red kettle ", "table": {"brand": "Acme"},
            "image": "images/a.jpg", "video": "videos/a.mp4"}
    p = write_lines(tmp_path / "c.jsonl", [
        json.dumps(good).encode(),
        b"{not json",
        json.dumps({"label": "x"}).encode(),                      # no id
        json.dumps(["a", "list"]).encode(),                       # not an object
        b"\xff\xfe bad utf8",
        json.dumps({"id": "b", "title": 5}).encode(),             # title of the wrong type
        json.dumps({"id": "c", "table": "k#:#v#;#color#:#red"}).encode(),
        json.dumps({"id": "a", "title": "dup"}).encode(),         # duplicate id
    ])
    c = read_corpus(p)
    assert [x.id for x in c.products] == ["a", "c"]
    a = c.products[0]
    assert a.title == "Red kettle" and a.table == [("brand", "Acme")]
    assert a.audio is None and a.audio_source == "videos/a.mp4"  # audio from the video's track
    assert c.products[1].table == [("k", "v"), ("color", "red")]
    where = [b.where for b in c.bad]
    assert where == ["line 2", "line 3", "line 4", "line 5", "line 6", "line 8"]
    assert "duplicate id 'a'" in c.bad[-1].error


def test_m5product_json_with_urls_and_pv_strings(tmp_path):
    data = {
        "1001": {"title": "Acme kettle", "label": "kettle", "url": "https://img.example.com/x/1001.jpg?s=2",
                 "video": "https://v.example.com/1001.mp4", "pv": "brand#:#Acme#;#capacity#:#1.7L#;#junk"},
        "1002": {"title": "Lamp", "label": "lamp", "url": "images/1002.jpg", "video": "", "pv": ""},
        "1003": "not a record",
    }
    p = tmp_path / "m5.json"
    p.write_text(json.dumps(data))
    c = read_corpus(p)
    assert [x.id for x in c.products] == ["1001", "1002"]
    a, b = c.products
    assert a.image == "1001.jpg" and a.video == "1001.mp4"
    assert a.table == [("brand", "Acme"), ("capacity", "1.7L")]  # the malformed pair is dropped
    assert b.image == "images/1002.jpg" and b.video is None and b.table is None
    assert c.bad[0].where == "id 1003"


def test_table_forms():
    assert parse_table({"a": 1, "b": ["x", "y"]}) == [("a", "1"), ("b", "x, y")]
    assert parse_table([["k", "v"], ["bad"]]) == [("k", "v")]
    assert parse_table("no separators at all") is None
    assert parse_table("#:#v") is None  # empty key
    with pytest.raises(ValueError):
        parse_table(3.5)
    assert media_name_from_url("s3://bucket/a/b.mp4") == "b.mp4"
    assert media_name_from_url("videos/b.mp4") == "videos/b.mp4"


def test_unusable_corpus_files_raise_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(CorpusError, match="is empty"):
        read_corpus(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text("{}\n[]\n")
    with pytest.raises(CorpusError, match="no valid product"):
        read_corpus(tmp_path / "bad.jsonl")


def test_demo_corpus_reads_cleanly(demo_corpus):
    c = read_corpus(demo_corpus / "corpus.jsonl")
    assert len(c) == 32 and not c.bad
