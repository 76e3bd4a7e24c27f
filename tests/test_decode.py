import json

import numpy as np
import pytest
from PIL import Image

from scalemm.extract.decode import (DecodeConfig, DecodeError, decode_audio, decode_image, decode_video, resolve_media,
                            video_frame_indices)

CFG = DecodeConfig(image_size=64, video_max_frames=4)


def _records(corpus_dir):
    return [json.loads(line) for line in (corpus_dir / "corpus.jsonl").read_text().splitlines()]


def _classify(corpus_dir, key, fn):
    ok, bad = [], []
    for r in _records(corpus_dir):
        rel = r.get(key)
        if not rel:
            continue
        try:
            out = fn(resolve_media(corpus_dir, rel), CFG)
            ok.append(out)
        except DecodeError as e:
            bad.append(str(e))
    return ok, bad


def test_images_decode_or_fail_as_the_corpus_says(demo_corpus):
    stats = json.loads((demo_corpus / "corpus_stats.json").read_text())["modalities"]["image"]
    ok, bad = _classify(demo_corpus, "image", decode_image)
    assert len(ok) == stats["expected_ok"] and len(bad) == stats["expected_failures"]
    assert all(a.shape == (64, 64, 3) and a.dtype == np.uint8 for a in ok)
    assert all(a.std() > 5 for a in ok)  # real pictures, not blank frames


def test_videos_decode_frames_at_one_fps(demo_corpus):
    stats = json.loads((demo_corpus / "corpus_stats.json").read_text())["modalities"]["video"]
    ok, bad = _classify(demo_corpus, "video", decode_video)
    assert len(ok) == stats["expected_ok"] and len(bad) == stats["expected_failures"]
    for v in ok:
        assert v.ndim == 4 and 1 <= v.shape[0] <= 4 and v.shape[1:] == (64, 64, 3)
    assert any(v.shape[0] > 1 for v in ok)
    assert all("not a decodable video" in b for b in bad)


def test_audio_from_files_and_video_tracks(demo_corpus):
    recs = _records(demo_corpus)
    ok = bad = 0
    from_video = 0
    for r in recs:
        src = r.get("audio") or r.get("video")
        if not src:
            continue
        try:
            w = decode_audio(resolve_media(demo_corpus, src), CFG)
            assert w.dtype == np.float32 and w.ndim == 1 and 0 < len(w) <= 12 * 16000
            assert np.abs(w).max() > 1e-3  # a real sound, not silence
            ok += 1
            from_video += not r.get("audio")
        except DecodeError:
            bad += 1
    stats = json.loads((demo_corpus / "corpus_stats.json").read_text())["modalities"]["audio"]
    assert (ok, bad) == (stats["expected_ok"], stats["expected_failures"])
    assert from_video > 0


def test_media_paths_outside_the_root_are_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    with pytest.raises(DecodeError, match="outside the media root"):
        resolve_media(tmp_path / "root", "../secret.jpg")
    with pytest.raises(DecodeError, match="outside the media root"):
        resolve_media(tmp_path / "root", "/etc/passwd")
    with pytest.raises(DecodeError, match="missing file"):
        resolve_media(tmp_path / "root", "nope.jpg")
    (tmp_path / "root" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        resolve_media(tmp_path / "root", "empty.jpg")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(p)  # 144 Mpx, a few KB on disk
    assert p.stat().st_size < 1_000_000
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(p, CFG)


def test_other_format_under_image_extension(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(100))
    with pytest.raises(DecodeError, match="not a decodable image"):
        decode_image(p, CFG)


def test_frame_sampling():
    assert video_frame_indices(72, 24.0, 1.0, 12) == [0, 24, 48]
    idx = video_frame_indices(24 * 60, 24.0, 1.0, 12)  # one minute: capped, spread uniformly
    assert len(idx) == 12 and idx[0] == 0 and idx[-1] >= 24 * 58
    assert video_frame_indices(0, 24.0, 1.0, 12) == []
    assert video_frame_indices(5, 0.0, 1.0, 12) == [0]
