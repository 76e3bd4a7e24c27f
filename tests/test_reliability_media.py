"""Reliability of extraction on hostile input: one end-to-end run over a corpus of bad media
and bad records (zero-byte, truncated and mislabelled files, a decompression bomb, videos
without frames, audio without samples or with an unknown codec, broken text, malformed
tables, missing files, paths outside the media root, duplicate ids) and one item whose
decoder really crashes (SIGSEGV, injected into the Ray workers by tests/decoder_faults.py).

Every failing item x modality must be recorded exactly once with a reason, and every other
modality of those items must still be extracted."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from scalemm import store
from scalemm.corpora.media import mux_mono_audio

from decoder_faults import CRASH_MARKER, runtime_env as crashing_decoders
MODS = store.MODALITIES
GOOD_TABLE = {"brand": "Acme", "colour": "red"}


def _good_media(corpus: Path) -> dict[str, Path]:
    """A decodable image, a video with a sound track and a standalone wav from the demo corpus."""
    recs = [json.loads(x) for x in (corpus / "corpus.jsonl").read_text().splitlines()]
    bad = json.loads((corpus / "corpus_stats.json").read_text())["expected_failure_ids"]
    out: dict[str, Path] = {}
    for r in recs:
        if r.get("image") and r["id"] not in bad["image"]:
            out.setdefault("image", corpus / r["image"])
        if r.get("video") and not r.get("audio") and r["id"] not in bad["video"] + bad["audio"]:
            out.setdefault("video", corpus / r["video"])
        if r.get("audio") and r["id"] not in bad["audio"]:
            out.setdefault("audio", corpus / r["audio"])
    assert set(out) == {"image", "video", "audio"}, out
    return out


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (a few dozen bytes: a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _wav(n_samples: int, fmt_tag: int = 1) -> bytes:
    data = (np.sin(np.arange(n_samples) / 5.0) * 8000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", fmt_tag, 1, 16000, 32000, 2, 16)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def _audio_only_mp4(path: Path) -> None:
    """An mp4 with a sound track and no video stream."""
    import av
    c = av.open(str(path), "w", format="mp4")
    try:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        t = np.linspace(0, 2, 32000, dtype=np.float32)
        mux_mono_audio(c, s, 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    finally:
        c.close()


def _frameless_mp4(path: Path) -> None:
    """An mp4 whose video stream holds packets that decode to no frame (and no sound track)."""
    import av
    rng = np.random.default_rng(0)
    c = av.open(str(path), "w", format="mp4")
    try:
        s = c.add_stream("mpeg4", rate=1)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for i in range(3):
            p = av.Packet(rng.bytes(200))
            p.stream, p.pts, p.dts, p.time_base = s, i, i, Fraction(1, 1)
            c.mux(p)
    finally:
        c.close()


def build_hostile_corpus(demo: Path, root: Path) -> tuple[Path, dict[tuple[str, str], str], dict[str, set[str]]]:
    """Write ROOT/media/... and ROOT/media/corpus.jsonl.

    Returns the corpus path, the expected failures {(id, modality): words in the reason}
    and, per id, the modalities that must be extracted (count > 0)."""
    media = _write_hostile_media(_good_media(demo), root)
    lines, expect = _hostile_records(root)
    corpus = media / "corpus.jsonl"
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    return corpus, expect, _present_modalities(lines, expect)


def _write_hostile_media(good: dict[str, Path], root: Path) -> Path:
    """ROOT/media/{images,videos,audio}/: good files, broken ones, and a file outside the media
    root with a symlink to it; returns ROOT/media."""
    media = root / "media"
    for d in ("images", "videos", "audio"):
        (media / d).mkdir(parents=True)
    shutil.copy(good["image"], media / "images" / "good.jpg")
    shutil.copy(good["video"], media / "videos" / "good.mp4")
    shutil.copy(good["audio"], media / "audio" / "good.wav")
    shutil.copy(good["video"], media / "videos" / f"{CRASH_MARKER}.mp4")
    jpg = good["image"].read_bytes()
    (media / "images" / "zero.jpg").write_bytes(b"")
    (media / "images" / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (media / "images" / "wav.jpg").write_bytes(good["audio"].read_bytes())  # a wav under .jpg
    (media / "images" / "bomb.png").write_bytes(_png_header(9000, 9000))  # 81 Mpx claimed
    mp4 = good["video"].read_bytes()
    (media / "videos" / "truncated.mp4").write_bytes(mp4[: len(mp4) // 3])
    (media / "videos" / "html.mp4").write_bytes(b"<html><body>404 Not Found</body></html>\n" * 20)
    _audio_only_mp4(media / "videos" / "audio_only.mp4")
    _frameless_mp4(media / "videos" / "frameless.mp4")
    (media / "audio" / "zero.wav").write_bytes(b"")
    (media / "audio" / "silent.wav").write_bytes(_wav(0))  # a valid header, no samples
    (media / "audio" / "codec.wav").write_bytes(_wav(16000, fmt_tag=0x3F3F))  # unknown codec tag
    (media / "audio" / "jpg.wav").write_bytes(jpg)  # a jpeg under .wav
    (root / "outside.jpg").write_bytes(jpg)  # a real image, but outside the media root
    (media / "images" / "link.jpg").symlink_to(root / "outside.jpg")
    return media


def _hostile_records(root: Path) -> tuple[list[bytes], dict[tuple[str, str], str]]:
    """The corpus lines (good, bad media, bad text and tables, a crashing decoder, broken
    lines), and the expected failures {(id, modality): words in the reason}."""
    def rec(pid: str, **kw) -> dict:
        r = {"id": pid, "label": "kettle", "title": f"Acme kettle {pid}", "table": GOOD_TABLE,
             "image": "images/good.jpg", "video": "videos/good.mp4"}
        r.update(kw)
        return {k: v for k, v in r.items() if v is not None}

    expect: dict[tuple[str, str], str] = {}
    lines: list[bytes] = []

    def add(r: dict, fails: dict[str, str] | None = None) -> None:
        lines.append(json.dumps(r).encode())
        for m, why in (fails or {}).items():
            expect[(r["id"], m)] = why

    add(rec("ok-1"))
    add(rec("ok-2", audio="audio/good.wav"))
    add(rec("img-zero", image="images/zero.jpg"), {"image": "empty file"})
    add(rec("img-truncated", image="images/truncated.jpg"), {"image": "not a decodable image"})
    add(rec("img-wav", image="images/wav.jpg"), {"image": "not a decodable image"})
    add(rec("img-bomb", image="images/bomb.png"), {"image": "decompression bomb"})
    add(rec("img-missing", image="images/nope.jpg"), {"image": "missing file"})
    add(rec("img-outside", image="../outside.jpg"), {"image": "outside the media root"})
    add(rec("img-absolute", image=str(root / "outside.jpg")), {"image": "outside the media root"})
    add(rec("img-symlink", image="images/link.jpg"), {"image": "outside the media root"})
    # a video that cannot be read fails twice: as video, and as the sound track the audio comes from
    add(rec("vid-truncated", video="videos/truncated.mp4"),
        {"video": "not a decodable video", "audio": "no decodable audio"})
    add(rec("vid-html", video="videos/html.mp4", audio="audio/good.wav"), {"video": "not a decodable video"})
    add(rec("vid-audio-only", video="videos/audio_only.mp4"), {"video": "video"})  # its sound is fine
    add(rec("vid-frameless", video="videos/frameless.mp4", audio="audio/good.wav"), {"video": "video"})
    add(rec("aud-zero", audio="audio/zero.wav"), {"audio": "empty file"})
    add(rec("aud-silent", audio="audio/silent.wav"), {"audio": "audio"})
    add(rec("aud-codec", audio="audio/codec.wav"), {"audio": "audio"})
    add(rec("aud-jpg", audio="audio/jpg.wav"), {"audio": "audio"})
    add(rec("txt-long", title="Acme kettle " + "very " * 200_000))  # 1 MB title: capped, still a text
    lines.append(b'{"id": "txt-surrogate", "label": "kettle", "title": "Acme \\ud800 kettle", '
                 b'"table": {"brand": "Acme\\udfff"}, "image": "images/good.jpg"}')
    add(rec("tab-string", table="brand Acme; colour red"), {"table": "malformed table"})
    add(rec("tab-number", table=3.5), {"table": "table"})
    add(rec(f"crash-{CRASH_MARKER}", video=f"videos/{CRASH_MARKER}.mp4"),
        {"video": "crashed", "audio": "crashed"})
    lines.append(b'{"id": "bad-utf8", "title": "caf\xe9 \xff\xfe", "image": "images/good.jpg"}')
    expect[(None, f"line {len(lines)}")] = "utf-8"
    lines.append(b'{"id": "bad-\\udc80-id", "title": "an id no store can hold", "image": "images/good.jpg"}')
    expect[(None, f"line {len(lines)}")] = "not valid Unicode"
    lines.append(json.dumps(rec("ok-1", title="a duplicate id")).encode())
    expect[(None, f"line {len(lines)}")] = "duplicate id 'ok-1'"
    return lines, expect


def _present_modalities(lines: list[bytes], expect: dict[tuple[str, str], str]) -> dict[str, set[str]]:
    """Per product id (the first line of an id; not the broken lines), the modalities that must
    be extracted: those it names, less the expected failures."""
    present: dict[str, set[str]] = {}
    for raw in lines:
        try:
            r = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            continue
        if r["id"] in present or r["id"].startswith("bad-"):
            continue
        mods = {"text"} | {m for m in ("image", "video", "table") if r.get(m)}
        if r.get("audio") or r.get("video"):
            mods.add("audio")
        present[r["id"]] = {m for m in mods if (r["id"], m) not in expect}
    return present


@pytest.fixture(scope="module")
def hostile(demo_corpus, tiny_config, tmp_path_factory):
    import ray

    from scalemm.extract.job import run_extraction

    root = tmp_path_factory.mktemp("hostile")
    corpus, expect, present = build_hostile_corpus(demo_corpus, root)
    out = root / "feats"
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env=crashing_decoders())
    try:
        stats = run_extraction(corpus, corpus.parent, out, tiny_config)
    finally:
        ray.shutdown()
    return out, stats, expect, present


def _failures(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / store.FAILURES).read_text().splitlines()]


@pytest.mark.slow
def test_hostile_media_fail_once_each_with_a_reason(hostile):
    out, stats, expect, _ = hostile
    fails = _failures(out)
    assert stats.failures == len(fails)
    keys = [(f["id"], f["modality"]) if f["id"] is not None else (None, f["error"].split(":")[0]) for f in fails]
    assert len(keys) == len(set(keys)), "an item x modality was recorded twice"
    extra, missing = set(keys) - set(expect), set(expect) - set(keys)
    assert not extra and not missing, (sorted(extra, key=str), sorted(missing, key=str))
    for f, k in zip(fails, keys):
        assert expect[k].lower() in f["error"].lower(), (k, f["error"])
    # the refused path is named, not read: the error says so before any decoder ran
    assert all("refused" in f["error"] for f in fails if f["id"] in ("img-outside", "img-absolute", "img-symlink"))


@pytest.mark.slow
def test_other_modalities_of_hostile_items_are_extracted(hostile):
    out, _, expect, present = hostile
    stores = {m: store.open_modality(out, m).load() for m in MODS}
    ids = stores["text"].ids
    assert ids == list(present)  # corpus order; the bad-UTF-8 line and the duplicate are not items
    for m in MODS:
        assert stores[m].ids == ids
        counts = dict(zip(ids, stores[m].counts.tolist()))
        for pid in ids:
            if m in present[pid]:
                assert counts[pid] > 0, (pid, m)
            else:
                assert counts[pid] == 0, (pid, m)
                assert not np.any(stores[m].tokens[ids.index(pid)])
    # the megabyte title was capped, not dropped; the broken Unicode escapes were kept as text
    assert "text" in present["txt-long"] and "table" in present["txt-surrogate"]


@pytest.mark.slow
def test_native_decoder_crash_costs_one_record_per_modality(hostile):
    """The injected crash really kills the decoding child process (SIGSEGV) for one item: the job
    completes, that item's video and audio each get one record, nothing else is affected."""
    out, stats, _, present = hostile
    crash_id = f"crash-{CRASH_MARKER}"
    fails = [f for f in _failures(out) if f["id"] == crash_id]
    assert sorted(f["modality"] for f in fails) == ["audio", "video"]
    assert all("crashed" in f["error"] for f in fails)
    assert not any("crashed" in f["error"] for f in _failures(out) if f["id"] != crash_id)
    # the same file under another name (ok-1's good.mp4) decoded fine in the same job
    assert {"video", "audio", "image", "text", "table"} <= present["ok-1"]
    assert stats.shards_written == len(list((out / "failures").glob("shard-*.jsonl")))


def test_an_injected_decoder_crash_costs_that_item_only(demo_corpus, tiny_config, tmp_path, monkeypatch):
    """Without Ray: the crashing decoders of tests/decoder_faults.py kill the isolated decoder
    child for a marked file; its video and audio get a "crashed" reason and the same file under
    another name decodes in the next child."""
    import decoder_faults

    from scalemm.corpus import Product
    from scalemm.extract import decoding

    good = _good_media(demo_corpus)["video"]
    shutil.copy(good, tmp_path / f"{CRASH_MARKER}.mp4")
    shutil.copy(good, tmp_path / "fine.mp4")
    monkeypatch.setattr(decoding, "decode_video", decoder_faults.crashing_decode_video)
    monkeypatch.setattr(decoding, "decode_audio", decoder_faults.crashing_decode_audio)
    cfg = tiny_config
    assert cfg.isolate_decoders
    crashed = decoding.decode_product(Product(id="c", video=f"{CRASH_MARKER}.mp4"), str(tmp_path), cfg)
    fine = decoding.decode_product(Product(id="f", video="fine.mp4"), str(tmp_path), cfg)
    assert sorted(crashed["errors"]) == ["audio", "video"] and not crashed["media"]
    assert all("crashed" in e for e in crashed["errors"].values())
    assert sorted(fine["media"]) == ["audio", "video"] and not fine["errors"]


def _running(pid: int) -> bool:
    """The OS's view: gone, or a zombie waiting to be reaped, is not running."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_hung_decoder_is_killed_after_the_timeout(monkeypatch):
    """A decoder that never returns costs one record and its process (not a CPU for ever)."""
    import signal

    from scalemm.extract import isolated as worker
    from scalemm.extract.decode import DecodeError

    pids, real = [], worker.reset

    def spy() -> None:
        if worker.decoder_pid() is not None:
            pids.append(worker.decoder_pid())
        real()

    monkeypatch.setattr(worker, "reset", spy)
    # a picklable stand-in for a hung native decoder: fn(path, cfg) waits 120 s for a signal
    with pytest.raises(DecodeError, match="longer than"):
        worker._isolated(signal.sigtimedwait, [signal.SIGUSR2], 120, timeout=4)
    assert pids and worker.decoder_pid() is None
    import time

    for pid in pids:
        deadline = time.time() + 20
        while _running(pid) and time.time() < deadline:
            time.sleep(0.2)
        assert not _running(pid)


def test_the_decoder_child_exits_when_its_worker_is_killed(tmp_path):
    """A decode worker killed outright (a Ray worker when the cluster stops) must not leave its
    decoder child behind (re-parented to init, it would wait on its pipe for ever)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "worker.py"
    script.write_text(
        "import time\n"
        "from scalemm.extract import isolated\n"
        "if __name__ == '__main__':  # the spawned child imports this file too\n"
        "    assert isolated._isolated(max, 1, 2, timeout=60) == 2  # the child is up and has decoded\n"
        "    print(isolated.decoder_pid(), flush=True)\n"
        "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(proc.stdout.readline())
        assert Path(f"/proc/{child}").exists()
        os.kill(proc.pid, signal.SIGKILL)  # no atexit, no shutdown: what a killed Ray worker does
        proc.wait(10)
        deadline = time.time() + 20
        while _running(child) and time.time() < deadline:
            time.sleep(0.2)
        assert not _running(child), "the decoder child outlived its worker"
    finally:
        proc.kill()
        if child is not None:  # a failing run leaves nothing behind either
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_worker_whose_children_ray_killed_exits_without_a_word(tmp_path):
    """Ray kills a worker's child processes as the worker exits, multiprocessing's resource
    tracker among them. Decoding through the isolated child must leave nothing for the exiting
    worker to report then: with a process pool its semaphores' finalizers found the tracker dead
    and printed a warning and a KeyError traceback each into every extraction log."""
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import os, signal, time\n"
        "from pathlib import Path\n"
        "from scalemm.extract import isolated\n"
        "if __name__ == '__main__':  # the spawned child imports this file too\n"
        "    assert isolated._isolated(max, 1, 2, timeout=60) == 2\n"
        "    killed = 0\n"
        "    for stat in Path('/proc').glob('[0-9]*/stat'):  # what Ray does: kill every child\n"
        "        try:\n"
        "            ppid = int(stat.read_text().rsplit(')', 1)[1].split()[1])\n"
        "        except (OSError, IndexError, ValueError):\n"
        "            continue\n"
        "        if ppid == os.getpid():\n"
        "            os.kill(int(stat.parent.name), signal.SIGKILL)\n"
        "            killed += 1\n"
        "    time.sleep(0.5)\n"
        "    print(killed, flush=True)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 1  # the decoder child at least (and the tracker, where one runs)
    assert done.stderr == ""


def test_a_decoders_own_error_comes_back_as_itself_from_the_same_child():
    """An exception the decoder raises in the child (a bad value, a missing file: an OSError) is
    raised again in the worker as itself, not taken for a crash, and the child is kept."""
    from scalemm.extract import isolated

    assert isolated._isolated(max, 1, 2, timeout=60) == 2
    pid = isolated.decoder_pid()
    with pytest.raises(ValueError, match="invalid literal"):
        isolated._isolated(int, "not a number", 10, timeout=60)
    with pytest.raises(FileNotFoundError):
        isolated._isolated(open, "/nonexistent/scalemm/video.mp4", "rb", timeout=60)
    assert isolated.decoder_pid() == pid
    isolated.reset()
    assert isolated.decoder_pid() is None
