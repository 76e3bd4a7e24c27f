"""The clipart development corpus: real pictures and names, labels, decoding, wrong titles,
listings, determinism, no label leak, the CLI and the missing-package error.

Needs the Debian packages openclipart-png and espeak-ng; without them the corpus tests skip,
unless SCALE_REQUIRE_MEDIA_PACKAGES is set (CI), where they fail instead of skipping.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import subprocess
import sys
import wave
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from scalemm.corpora import clipart
from scalemm.corpus import read_corpus
from scalemm.extract.decode import decode_audio, decode_image, decode_video
from cli_output import last_json

REPO = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "SCALE_REQUIRE_MEDIA_PACKAGES"
N = 40
FEW = ["food/vegetables", "computer/folders", "signs_and_symbols/money"]


def _need_packages() -> None:
    try:
        clipart.check_packages()
    except clipart.MissingPackagesError as e:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set, so this test may not skip: {e}")
        pytest.skip(f"Debian media packages absent ({e}); set {REQUIRE_ENV}=1 to make this a failure")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    _need_packages()
    base = tmp_path_factory.mktemp("clipart")
    a = clipart.make_corpus(base / "a", N, 5, workers=2)
    b = clipart.make_corpus(base / "b", N, 5, workers=1)  # same seed, other worker count
    return {"a": (base / "a", a), "b": (base / "b", b)}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _found(name: str, title: str) -> float:
    """Share of the name's words found in the title (a word with one typo counts)."""
    tw = _words(title)
    nw = _words(name)
    hit = sum(1 for w in nw if any(difflib.SequenceMatcher(None, w, t).ratio() >= 0.75 for t in tw))
    return hit / max(len(nw), 1)


def test_clean_name_from_real_file_names():
    assert clipart.clean_name("aiga_barber_shop1") == "aiga barber shop"
    assert clipart.clean_name("smiley105") == "smiley"
    assert clipart.clean_name("folder_01") == "folder"
    assert clipart.clean_name("mouth_-_body_part_nicu_b_05") == "mouth body part nicu b"
    assert clipart.clean_name("DangerElectrique") == "Danger Electrique"
    assert clipart.clean_name("8_ball_jarno_vasamaa") == "8 ball jarno vasamaa"
    assert clipart.clean_name("01") == "01"


def test_missing_packages_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(clipart.shutil, "which", lambda name: None)
    with pytest.raises(clipart.MissingPackagesError) as e:
        clipart.make_corpus(tmp_path / "out", 10, 0)
    msg = str(e.value)
    assert "espeak-ng" in msg and "openclipart-png" in msg and "apt-get install" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(clipart.MissingPackagesError, match="not a directory"):
        clipart.check_packages(tmp_path / "nowhere")
    # the CLI: one line on stderr, no traceback (espeak-ng not on PATH)
    env = {**os.environ, "PATH": str(tmp_path)}
    p = subprocess.run([sys.executable, str(REPO / "pipelines" / "make_corpus.py"), "--kind", "clipart",
                        "--out", str(tmp_path / "cli"), "--quiet"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("error:") and "apt-get install -y openclipart-png espeak-ng" in p.stderr


def test_labels_are_the_given_categories_and_every_one_appears(built):
    root, stats = built["a"]
    recs = _lines(root / "corpus.jsonl")
    assert len(recs) == N
    labels = {r["label"] for r in recs}
    assert labels == set(clipart.DEFAULT_CATEGORIES)
    sizes = stats["category_sizes"]
    assert sum(sizes.values()) == N and min(sizes.values()) >= 1
    for s in _lines(root / "sources.jsonl"):
        rec = next(r for r in recs if r["id"] == s["id"])
        assert s["source"].startswith(rec["label"] + "/")
        assert (clipart.DEFAULT_ROOT / s["source"]).is_file()


def test_other_categories_and_root_through_the_cli(tmp_path):
    _need_packages()
    out = tmp_path / "few"
    p = subprocess.run([sys.executable, str(REPO / "pipelines" / "make_corpus.py"), "--kind", "clipart",
                        "--out", str(out), "--items", "8", "--seed", "2", "--categories", ",".join(FEW),
                        "--clipart-root", str(clipart.DEFAULT_ROOT), "--check", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    summary = last_json(p.stdout)
    assert summary["check"] == "ok" and summary["n_items"] == 8
    assert {r["label"] for r in _lines(out / "corpus.jsonl")} == set(FEW)
    assert all(s["source"].split("/")[0] + "/" + s["source"].split("/")[1] in FEW
               for s in _lines(out / "sources.jsonl"))


def test_every_media_file_decodes_with_the_project_decoders(built):
    root, stats = built["a"]
    corpus = read_corpus(root / "corpus.jsonl", fmt="jsonl")
    assert not corpus.bad and len(corpus) == N
    present = defaultdict(int)
    for p in corpus.products:
        if p.image:
            img = decode_image(root / p.image)
            assert img.shape == (224, 224, 3) and img.std() > 1
            present["image"] += 1
        if p.video:
            frames = decode_video(root / p.video)
            assert frames.ndim == 4 and 3 <= frames.shape[0] <= 12
            present["video"] += 1
        if p.audio:
            with wave.open(str(root / p.audio), "rb") as w:
                assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        if p.audio_source:
            wav = decode_audio(root / p.audio_source)  # a WAV, or the video's AAC sound track
            assert wav.size > 16000 and np.abs(wav).max() > 0.01
            present["audio"] += 1
        present["text"] += p.title is not None
        present["table"] += p.table is not None
    for m in clipart.MODALITIES:
        assert present[m] == stats["modalities"][m]["expected_ok"]
        assert present[m] + stats["modalities"][m]["absent"] == N
    assert 0 < stats["totals"]["products_missing_a_modality"] < N / 2


def test_titles_come_from_the_real_file_names_and_wrong_titles_are_recorded(built):
    root, stats = built["a"]
    recs = {r["id"]: r for r in _lines(root / "corpus.jsonl")}
    sources = {s["id"]: s for s in _lines(root / "sources.jsonl")}
    wrong = [i for i, s in sources.items() if s["wrong_title_source"]]
    assert sorted(wrong) == sorted(stats["wrong_title_ids"])
    assert len(wrong) == round(clipart.WRONG_TITLE_RATE * N) == stats["totals"]["wrong_titles"]
    for pid, rec in recs.items():
        if "title" not in rec:
            continue
        s = sources[pid]
        name_src = s["wrong_title_source"] or s["source"]
        name = clipart.clean_name(Path(name_src).stem)
        assert _found(name, rec["title"]) >= 0.5, (rec["title"], name)
        if s["wrong_title_source"]:
            # really another category's file, of a product in this corpus
            wrong_cat = next(c for c in clipart.DEFAULT_CATEGORIES if name_src.startswith(c + "/"))
            assert wrong_cat != rec["label"]
            assert name_src in {o["source"] for o in sources.values()}


def test_second_listings_share_the_instance_and_the_picture(built):
    root, stats = built["a"]
    recs = _lines(root / "corpus.jsonl")
    sources = {s["id"]: s for s in _lines(root / "sources.jsonl")}
    by_inst = defaultdict(list)
    for r in recs:
        by_inst[r["instance"]].append(r)
    twice = [v for v in by_inst.values() if len(v) == 2]
    assert len(twice) == stats["instance_listings"]["2"] >= 5
    assert all(len(v) <= 2 for v in by_inst.values())
    for a, b in twice:
        assert a["label"] == b["label"]
        assert sources[a["id"]]["source"] == sources[b["id"]]["source"]
        assert {sources[a["id"]]["listing"], sources[b["id"]]["listing"]} == {1, 2}
        if "image" in a and "image" in b:  # another photo of the same picture
            assert (root / a["image"]).read_bytes() != (root / b["image"]).read_bytes()


def test_nothing_in_ids_or_paths_leaks_the_label(built):
    root, _ = built["a"]
    cat_words = {w for c in clipart.DEFAULT_CATEGORIES for w in re.split(r"[/_\-]", c) if len(w) > 2}
    for r in _lines(root / "corpus.jsonl"):
        assert re.fullmatch(r"p\d{5}", r["id"]) and re.fullmatch(r"i\d{5}", r["instance"])
        for key, ext, folder in (("image", "jpg", "images"), ("video", "mp4", "videos"), ("audio", "wav", "audio")):
            if key in r:
                assert r[key] == f"{folder}/{r['id']}.{ext}"
    for f in root.rglob("*"):
        rel = f.relative_to(root).as_posix().lower()
        assert not any(w in rel for w in cat_words), rel


def test_same_seed_same_corpus(built, tmp_path):
    (ra, _), (rb, _) = built["a"], built["b"]
    assert (ra / "corpus.jsonl").read_bytes() == (rb / "corpus.jsonl").read_bytes()
    assert (ra / "corpus_stats.json").read_bytes() == (rb / "corpus_stats.json").read_bytes()
    for sub in ("images", "videos", "audio"):
        ha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ra / sub).iterdir())}
        hb = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((rb / sub).iterdir())}
        assert ha == hb
    other = clipart.make_corpus(tmp_path / "c", 12, 6, categories=FEW)
    assert other["n_items"] == 12
    assert (tmp_path / "c" / "corpus.jsonl").read_bytes() != (ra / "corpus.jsonl").read_bytes()
