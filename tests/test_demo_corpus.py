"""The demo corpus generator: determinism, stats vs files, long tail, listings, real decoding."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import wave
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalemm.corpus import parse_table, read_corpus
from scalemm.corpora.demo import (
    AUDIO_SR,
    CATEGORIES,
    FPS,
    IMAGE_SIZE,
    MODALITIES,
    SOUND_F0,
    TIMBRES,
    VIDEO_SIZE,
    DemoCorpusError,
    make_corpus,
    plan_corpus,
)
from scalemm.corpora.writer import decode_check

decord = pytest.importorskip("decord")
from decord import AudioReader, VideoReader, cpu  # noqa: E402
from cli_output import last_json

REPO = Path(__file__).resolve().parents[1]
N = 40


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    a = make_corpus(base / "a", N, 7, workers=2)
    b = make_corpus(base / "b", N, 7, workers=1)  # output must not depend on the worker count
    c = make_corpus(base / "c", N, 8, workers=2)
    return {"a": (base / "a", a), "b": (base / "b", b), "c": (base / "c", c)}


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]


def _hashes(root: Path, sub: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / sub).iterdir())}


def _wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, AUDIO_SR)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_corpus(corpora):
    (ra, sa), (rb, sb) = corpora["a"], corpora["b"]
    assert (ra / "corpus.jsonl").read_bytes() == (rb / "corpus.jsonl").read_bytes()
    assert sa == sb
    assert json.loads((ra / "corpus_stats.json").read_text()) == json.loads((rb / "corpus_stats.json").read_text())
    for sub in ("images", "audio", "videos"):
        ha, hb = _hashes(ra, sub), _hashes(rb, sub)
        assert ha and ha == hb, sub


def test_different_seed_gives_different_corpus(corpora):
    (ra, sa), (rc, sc) = corpora["a"], corpora["c"]
    assert (ra / "corpus.jsonl").read_bytes() != (rc / "corpus.jsonl").read_bytes()
    ha, hc = _hashes(ra, "images"), _hashes(rc, "images")
    common = set(ha) & set(hc)
    assert common and sum(ha[k] != hc[k] for k in common) == len(common)
    assert [r["label"] for r in _records(ra)] != [r["label"] for r in _records(rc)]


# ------------------------------------------------------------------ stats vs files


def _decodes(kind: str, path: Path) -> bool:
    try:
        if kind == "image":
            with Image.open(path) as im:
                im.load()
            return True
        if kind == "video":
            vr = VideoReader(str(path), ctx=cpu(0))
            return len(vr) > 0 and vr[0].asnumpy().size > 0
        if path.suffix == ".wav":
            with wave.open(str(path), "rb") as w:
                return w.getnframes() > 0
        return AudioReader(str(path), ctx=cpu(0), sample_rate=AUDIO_SR, mono=True).shape[-1] > 0
    except Exception:
        return False


def test_stats_match_the_files(corpora):
    root, stats = corpora["a"]
    recs = _records(root)
    counts = {m: Counter() for m in MODALITIES}
    failed = defaultdict(list)
    for r in recs:
        src = {"image": r.get("image"), "video": r.get("video"), "audio": r.get("audio") or r.get("video")}
        for m in MODALITIES:
            if m == "text":
                state = "expected_ok" if r.get("title") else "absent"
            elif m == "table":
                state = "expected_ok" if r.get("table") else "absent"
            elif src[m] is None:
                state = "absent"
            else:
                assert (root / src[m]).is_file(), src[m]
                state = "expected_ok" if _decodes(m, root / src[m]) else "expected_failures"
            counts[m][state] += 1
            if state == "expected_failures":
                failed[m].append(r["id"])
    for m in MODALITIES:
        exp = stats["modalities"][m]
        assert sum(exp.values()) == N
        assert {k: counts[m][k] for k in exp} == exp, m
        assert sorted(failed[m]) == sorted(stats["expected_failure_ids"][m]), m
    # every kind of corruption is present and spread over image, video and audio
    assert all(stats["modalities"][m]["expected_failures"] >= 1 for m in ("image", "video", "audio"))
    # a corrupt video with no standalone audio fails both video and audio
    by_id = {r["id"]: r for r in recs}
    both = [i for i in stats["expected_failure_ids"]["video"] if "audio" not in by_id[i]]
    assert both and all(i in stats["expected_failure_ids"]["audio"] for i in both)
    # the other counts
    assert stats["n_items"] == N == len(recs)
    assert stats["category_sizes"] == dict(Counter(r["label"] for r in recs)) and sum(stats["category_sizes"].values()) == N
    assert stats["n_categories"] == len({r["label"] for r in recs})
    assert stats["n_instances"] == len({r["instance"] for r in recs})
    t = stats["totals"]
    assert t["expected_ok"] + t["expected_failures"] + t["absent"] == N * len(MODALITIES)
    assert t["products_missing_a_modality"] == sum(
        any(stats_state == "absent" for stats_state in _states(r)) for r in recs)
    assert t["tables_in_string_form"] == sum(isinstance(r.get("table"), str) for r in recs) >= 1


def _states(r: dict) -> list[str]:
    return ["absent" if not (r.get(k) or (k == "audio" and r.get("video"))) else "present"
            for k in ("image", "title", "table", "video", "audio")]


def test_decode_check_agrees_and_catches_tampering(corpora, tmp_path):
    root, _ = corpora["a"]
    res = decode_check(root)
    assert res["mismatches"] == []
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    rec = next(r for r in _records(copy) if r.get("image") and r["id"] not in res["failure_ids"]["image"])
    (copy / rec["image"]).write_bytes(b"not an image")
    bad = decode_check(copy)
    assert bad["mismatches"] and rec["id"] in bad["failure_ids"]["image"]


def test_reads_with_read_corpus(corpora):
    root, stats = corpora["a"]
    corpus = read_corpus(root / "corpus.jsonl")
    assert corpus.bad == [] and len(corpus) == N
    raw = {r["id"]: r for r in _records(root)}
    for p in corpus.products:
        r = raw[p.id]
        assert p.label == r["label"] and p.instance == r["instance"]
        if isinstance(r.get("table"), str):
            assert "#:#" in r["table"] and p.table == parse_table(r["table"]) and len(p.table) >= 2
        for key in ("image", "video", "audio"):
            if getattr(p, key):
                assert not Path(getattr(p, key)).is_absolute() and (root / getattr(p, key)).is_file()


# ------------------------------------------------------------------ catalogue shape


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_has_many_categories_and_a_long_tail(seed):
    specs = plan_corpus(300, seed)
    assert [s["index"] for s in specs] == list(range(300))
    sizes = Counter(s["category"] for s in specs)
    assert len(sizes) >= 20
    assert max(sizes.values()) >= 5 * min(sizes.values())
    head = sorted(sizes.values(), reverse=True)
    assert sum(head[:5]) >= 0.4 * 300  # a few categories hold much of the catalogue
    listings = Counter(Counter(s["instance"] for s in specs).values())
    assert set(listings) == {1, 2, 3}
    missing = sum(bool(s["missing"]) for s in specs)
    assert 0.17 * 300 <= missing <= 0.23 * 300
    titles = sum(s["title_mode"] != "ok" for s in specs)
    assert 0.08 * 300 <= titles <= 0.12 * 300
    corrupt = Counter(s["corrupt"] for s in specs if s["corrupt"])
    assert set(corrupt) == {"image", "video", "audio"} and 0.03 * 300 <= sum(corrupt.values()) <= 0.045 * 300
    assert all(not (s["corrupt"] and s["missing"]) for s in specs)


def test_instances_are_listed_1_to_3_times_with_different_titles_and_photos(corpora):
    root, stats = corpora["a"]
    by_inst = defaultdict(list)
    for r in _records(root):
        by_inst[r["instance"]].append(r)
    assert all(1 <= len(v) <= 3 for v in by_inst.values())
    multi = [v for v in by_inst.values() if len(v) > 1]
    assert multi
    assert sum(int(k) * v for k, v in stats["instance_listings"].items()) == N
    for group in multi:
        assert len({r["label"] for r in group}) == 1
        titles = [r["title"] for r in group if r.get("title")]
        assert len(set(titles)) == len(titles)
        images = [(root / r["image"]).read_bytes() for r in group if r.get("image")]
        assert len(set(images)) == len(images)
        # the same physical product: brand and model agree across sellers where the table names them
        for key in ("brand", "model"):
            vals = {v for r in group if r.get("table")
                    for k, v in (parse_table(r["table"]) or []) if k.lower() == key}
            assert len(vals) <= 1, (key, vals)


def test_categories_are_confusable_per_modality_but_not_jointly():
    names = [c["name"] for c in CATEGORIES]
    assert len(set(names)) == len(names) >= 20
    shapes = Counter(c["shape"] for c in CATEGORIES)
    sounds = Counter(c["sound"] for c in CATEGORIES)
    assert any(v > 1 for v in shapes.values()) and any(v > 1 for v in sounds.values())
    assert len({(c["shape"], c["sound"]) for c in CATEGORIES}) == len(CATEGORIES)
    assert len({frozenset(c["attrs"]) for c in CATEGORIES}) == len(CATEGORIES)


# ------------------------------------------------------------------ real decoders


def test_good_media_decode_and_corrupt_media_fail(corpora):
    root, stats = corpora["a"]
    recs = _records(root)
    fail = {m: set(v) for m, v in stats["expected_failure_ids"].items()}
    n_checked = Counter()
    for r in recs:
        if r.get("image"):
            if r["id"] in fail["image"]:
                with pytest.raises(Exception):
                    with Image.open(root / r["image"]) as im:
                        im.load()
            else:
                with Image.open(root / r["image"]) as im:
                    assert im.format == "JPEG" and im.size == (IMAGE_SIZE, IMAGE_SIZE)
                n_checked["image"] += 1
        if r.get("video"):
            if r["id"] in fail["video"]:
                with pytest.raises((RuntimeError, decord._ffi.base.DECORDError)):
                    VideoReader(str(root / r["video"]), ctx=cpu(0))
                with pytest.raises((RuntimeError, decord._ffi.base.DECORDError)):
                    AudioReader(str(root / r["video"]), ctx=cpu(0), sample_rate=AUDIO_SR, mono=True)
            elif n_checked["video"] < 6:
                vr = VideoReader(str(root / r["video"]), ctx=cpu(0))
                assert 2 * FPS <= len(vr) <= 4 * FPS + 1 and round(vr.get_avg_fps()) == FPS
                frames = vr.get_batch([0, len(vr) - 1]).asnumpy()
                assert frames.shape == (2, VIDEO_SIZE, VIDEO_SIZE, 3)
                assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 2  # it moves
                a = AudioReader(str(root / r["video"]), ctx=cpu(0), sample_rate=AUDIO_SR, mono=True)[:].asnumpy()
                assert a.shape[-1] >= 1.9 * AUDIO_SR and np.abs(a).max() > 0.05
                n_checked["video"] += 1
        if r.get("audio"):
            path = root / r["audio"]
            if r["id"] in fail["audio"]:
                if path.stat().st_size == 0:
                    with pytest.raises(EOFError):
                        wave.open(str(path), "rb")
                else:
                    with wave.open(str(path), "rb") as w:
                        assert w.getnframes() == 0
            else:
                x = _wav(path)
                assert len(x) >= 2 * AUDIO_SR and np.abs(x).max() > 0.05
                n_checked["audio"] += 1
    assert n_checked["image"] >= 20 and n_checked["video"] >= 3 and n_checked["audio"] >= 3


def test_audio_carries_the_category_sound(corpora):
    """The strongest spectral peak of a good WAV sits on one of its category's partials."""
    root, stats = corpora["a"]
    fail = set(stats["expected_failure_ids"]["audio"])
    names = {c["name"]: c for c in CATEGORIES}
    checked = 0
    for r in _records(root):
        if not r.get("audio") or r["id"] in fail:
            continue
        x = _wav(root / r["audio"])
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        freqs = np.fft.rfftfreq(len(x), 1 / AUDIO_SR)
        spec[freqs < 100] = 0
        peak = freqs[int(np.argmax(spec))]
        sid = names[r["label"]]["sound"]
        partials = [SOUND_F0[sid] * ratio for ratio, _ in TIMBRES[sid % len(TIMBRES)]]
        # instance pitch offsets stay within half a semitone (3%), vibrato within 1.2%
        assert min(abs(peak / p - 1) for p in partials) < 0.05, (r["label"], peak, partials)
        checked += 1
    assert checked >= 3


def test_video_shows_the_product_of_the_image(corpora):
    """Image and video frames show the same object: its colours agree far better than chance."""
    root, stats = corpora["a"]
    fail = set(stats["expected_failure_ids"]["image"]) | set(stats["expected_failure_ids"]["video"])
    pairs = [r for r in _records(root) if r.get("image") and r.get("video") and r["id"] not in fail][:8]

    def hist(a: np.ndarray) -> np.ndarray:
        q = (a.reshape(-1, 3) // 64).astype(int)
        h = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(float)
        return h / h.sum()

    ims = [hist(np.asarray(Image.open(root / r["image"]).convert("RGB"))) for r in pairs]
    vids = [hist(VideoReader(str(root / r["video"]), ctx=cpu(0))[0].asnumpy()) for r in pairs]
    assert len(pairs) >= 4
    # each frame is at least somewhat similar to its own image (object colours present in both)
    sims = np.array([[np.minimum(a, b).sum() for b in vids] for a in ims])
    assert np.mean(np.diag(sims)) > 0.1


# ------------------------------------------------------------------ API and CLI


def test_make_corpus_rejects_bad_input_and_foreign_directories(tmp_path):
    with pytest.raises(DemoCorpusError):
        make_corpus(tmp_path / "x", 0, 0)
    with pytest.raises(DemoCorpusError):
        make_corpus(tmp_path / "x", 3, -1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DemoCorpusError, match="not empty"):
        make_corpus(foreign, 3, 0)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    out = tmp_path / "rerun"
    make_corpus(out, 5, 1, workers=1)
    make_corpus(out, 3, 1, workers=1)  # an earlier demo corpus is replaced
    assert len(_records(out)) == 3 and len(list((out / "images").iterdir())) <= 3


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "make_corpus.py"), *args],
                          capture_output=True, text=True, cwd="/", timeout=300)


def test_cli_prints_stats_json_last(tmp_path):
    p = _cli("--out", str(tmp_path / "c"), "--items", "6", "--seed", "3", "--workers", "1", "--check")
    assert p.returncode == 0, p.stderr
    summary = last_json(p.stdout)
    assert summary["n_items"] == 6 and summary["seed"] == 3 and summary["check"] == "ok"
    stats = json.loads((tmp_path / "c" / "corpus_stats.json").read_text())
    assert summary["modalities"] == stats["modalities"]


@pytest.mark.parametrize("args", [["--items", "0"], ["--items", "x"], ["--items", "3", "--seed", "-2"], []])
def test_cli_bad_arguments_give_one_line(tmp_path, args):
    p = _cli("--out", str(tmp_path / "c"), *args) if args else _cli()
    assert p.returncode != 0
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("error:")


def test_cli_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    p = _cli("--out", str(tmp_path), "--items", "2", "--quiet")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "not empty" in p.stderr
