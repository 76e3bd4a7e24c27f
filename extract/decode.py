"""Media decoding: images (PIL), video frames and sound tracks (decord).

Every decoder takes a path already resolved inside the media root (see ``resolve_media``)
and returns plain numpy arrays sized for the backbones, or raises ``DecodeError`` with a
short reason. Decoding runs in Ray tasks, away from the model actors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_IMAGE_PIXELS = 64_000_000  # refuse larger images before decoding (decompression bombs)
MAX_MEDIA_BYTES = 2 << 30


class DecodeError(RuntimeError):
    """A media file could not be decoded; the message is the reason recorded in failures."""


@dataclass(frozen=True)
class DecodeConfig:
    image_size: int = 224
    video_fps: float = 1.0
    video_max_frames: int = 12
    sample_rate: int = 16000
    audio_max_seconds: float = 12.0


def resolve_media(media_root: str | Path, rel: str) -> Path:
    """The file for a corpus media path; refuses paths outside the media root and missing files."""
    root = Path(media_root).resolve()
    if not rel or "\x00" in rel:
        raise DecodeError("empty or invalid media path")
    p = (root / rel).resolve()
    if p != root and root not in p.parents:
        raise DecodeError(f"media path {rel!r} points outside the media root; refused")
    if not p.is_file():
        raise DecodeError(f"missing file {rel}")
    size = p.stat().st_size
    if size == 0:
        raise DecodeError(f"empty file {rel}")
    if size > MAX_MEDIA_BYTES:
        raise DecodeError(f"file {rel} is {size} bytes, over the {MAX_MEDIA_BYTES} limit")
    return p


def square_resize(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bicubic) and centre-crop to size x size, RGB uint8."""
    img = img.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_image(path: str | Path, cfg: DecodeConfig = DecodeConfig()) -> np.ndarray:
    """uint8 [S, S, 3]. Checks the header's size before decoding any pixel."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DecodeError(f"image is {w}x{h}, over {MAX_IMAGE_PIXELS} pixels (decompression bomb?); refused")
            if w < 1 or h < 1:
                raise DecodeError(f"image has no pixels ({w}x{h})")
            img.load()
            return square_resize(img, cfg.image_size)
    except DecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DecodeError(f"not a decodable image: {type(e).__name__}: {e}") from e


def video_frame_indices(n_frames: int, fps: float, target_fps: float, max_frames: int) -> list[int]:
    """Frames sampled at ``target_fps`` (one per second by default), capped at ``max_frames``
    spread uniformly over the clip when it is longer."""
    if n_frames <= 0:
        return []
    fps = fps if fps and fps > 0 else 25.0
    step = max(fps / target_fps, 1.0)
    idx = [int(round(i * step)) for i in range(int(np.ceil(n_frames / step)))]
    idx = [i for i in idx if i < n_frames] or [0]
    if len(idx) > max_frames:
        pick = np.linspace(0, len(idx) - 1, max_frames).round().astype(int)
        idx = [idx[i] for i in pick]
    return idx


def decode_video(path: str | Path, cfg: DecodeConfig = DecodeConfig()) -> np.ndarray:
    """uint8 [F, S, S, 3]: frames at ``video_fps`` (<= video_max_frames), square-resized."""
    from decord import VideoReader, cpu  # imported here: decord is heavy and native

    try:
        vr = VideoReader(str(path), ctx=cpu(0), num_threads=1)
        n = len(vr)
        idx = video_frame_indices(n, vr.get_avg_fps(), cfg.video_fps, cfg.video_max_frames)
        if not idx:
            raise DecodeError("video has no decodable frames")
        frames = vr.get_batch(idx).asnumpy()
    except DecodeError:
        raise
    except Exception as e:  # decord raises its own DECORDError (a RuntimeError) and others
        raise DecodeError(f"not a decodable video: {type(e).__name__}: {_short(e)}") from e
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise DecodeError("video has no decodable frames")
    return np.stack([square_resize(Image.fromarray(f), cfg.image_size) for f in frames])


def decode_audio(path: str | Path, cfg: DecodeConfig = DecodeConfig()) -> np.ndarray:
    """float32 mono waveform at ``sample_rate``, at most ``audio_max_seconds`` long.

    Works on audio files and on the sound track of videos (decord ``AudioReader``)."""
    from decord import AudioReader, cpu

    try:
        ar = AudioReader(str(path), ctx=cpu(0), sample_rate=cfg.sample_rate, mono=True)
        n = ar.shape[1] if len(ar.shape) == 2 else 0
        if n == 0:
            raise DecodeError("audio has no samples")
        n = min(n, int(cfg.sample_rate * cfg.audio_max_seconds))
        wav = ar[0:n].asnumpy()
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"no decodable audio: {type(e).__name__}: {_short(e)}") from e
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        raise DecodeError("audio has no samples")
    if not np.isfinite(wav).all():
        raise DecodeError("audio has non-finite samples")
    return wav


def _short(e: BaseException, n: int = 200) -> str:
    s = str(e).strip().splitlines()
    msg = s[0] if s else ""
    # decord's messages carry a C++ stack (keep the first line) and a clock time (drop it, so
    # that a rerun records the same reason)
    return re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", msg)[:n]


def file_size(path: str | Path) -> int:
    return os.stat(path).st_size
