"""Media files for the corpus makers: video with a sound track, WAV, and the broken files a
real crawl holds (garbage under an image name, a truncated mp4, a WAV without samples), plus a
check that a file decodes with the decoders extraction uses.

The settings below are the corpus makers' defaults (extraction resamples whatever it gets:
frames at 1 fps, audio at 16 kHz). Videos are muxed with ``+bitexact`` and encoded on one
thread, so the same frames and samples give byte-identical files on the same PyAV/x264 build.
"""

from __future__ import annotations

import io
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

FPS = 24
VIDEO_SIZE = 128  # square frames
AUDIO_SR = 16000  # Hz, mono
X264_PRESET = "superfast"
X264_CRF = "26"


def wav_bytes(x: np.ndarray | None, rate: int = AUDIO_SR) -> bytes:
    """16-bit PCM mono WAV of float samples in [-1, 1] (clipped); ``None`` or no samples gives a
    valid header with zero frames (a recording that decodes to nothing)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        if x is not None and len(x):
            w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def write_video(path: str | Path, frames: Iterable[Image.Image | np.ndarray], audio: np.ndarray, *,
                size: int = VIDEO_SIZE, fps: int = FPS, rate: int = AUDIO_SR) -> None:
    """An mp4 of ``frames`` (PIL images or RGB uint8 arrays, ``size`` x ``size``) as H.264
    (libx264, yuv420p) at ``fps``, with ``audio`` (float mono samples at ``rate`` Hz) as an AAC
    sound track."""
    import av

    c = av.open(str(path), "w", format="mp4", container_options={"fflags": "+bitexact"})
    try:
        vs = c.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.codec_context.thread_count = 1
        vs.codec_context.options = {"preset": X264_PRESET, "crf": X264_CRF, "threads": "1"}
        aus = c.add_stream("aac", rate=rate)
        aus.layout = "mono"
        aus.codec_context.thread_count = 1
        aus.codec_context.options = {"aac_coder": "fast"}
        for i, arr in enumerate(frames):
            f = (av.VideoFrame.from_image(arr) if isinstance(arr, Image.Image)
                 else av.VideoFrame.from_ndarray(arr, format="rgb24"))
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        mux_mono_audio(c, aus, audio, rate)
    finally:
        c.close()


_write_video = write_video  # the name the corpus makers imported it by


def mux_mono_audio(container: Any, stream: Any, samples: np.ndarray, rate: int) -> None:
    """Encode float mono ``samples`` at ``rate`` Hz into the PyAV audio ``stream`` of
    ``container`` (1024-sample frames) and flush it."""
    import av

    pts = 0
    for s in range(0, len(samples), 1024):
        chunk = np.ascontiguousarray(samples[s:s + 1024], np.float32)
        fr = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        fr.sample_rate, fr.pts, fr.time_base = rate, pts, Fraction(1, rate)
        pts += len(chunk)
        for p in stream.encode(fr):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


# --------------------------------------------------------------------------- broken files


def garbage_jpg(rng: np.random.Generator) -> bytes:
    """Bytes under a .jpg name that no image decoder accepts (a crawler's error page or noise)."""
    for _ in range(10):
        if rng.random() < 0.5:
            body = b"<html><head><title>404 Not Found</title></head><body>" + rng.bytes(int(rng.integers(200, 2000)))
        else:
            body = b"\x00\x00" + rng.bytes(int(rng.integers(500, 4000)))
        try:
            with Image.open(io.BytesIO(body)) as im:
                im.load()
        except Exception:
            return body
    raise RuntimeError("could not make an undecodable image")  # pragma: no cover


def truncate_file(path: str | Path, keep: float = 0.3) -> None:
    """Cut ``path`` to its first ``keep`` fraction, as an interrupted download leaves it. An mp4
    written by :func:`write_video` keeps its ``moov`` atom at the end, so it cannot be opened."""
    p = Path(path)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------- decode check


def decode_error(kind: str, path: str | Path, rate: int = AUDIO_SR) -> str | None:
    """None when the ``kind`` ("image", "video" or "audio") media at ``path`` decodes to something
    non-empty with the decoders extraction uses (PIL, decord; ``wave`` for .wav), else the error."""
    path = Path(path)
    try:
        if kind == "image":
            with Image.open(path) as im:
                im.load()
                if im.width < 1 or im.height < 1:
                    return "empty image"
        elif kind == "video":
            from decord import VideoReader, cpu

            vr = VideoReader(str(path), ctx=cpu(0))
            if len(vr) == 0:
                return "no frames"
            vr[len(vr) // 2].asnumpy()
        elif kind == "audio":
            if path.suffix.lower() == ".wav":
                with wave.open(str(path), "rb") as w:
                    if w.getnframes() == 0:
                        return "no samples"
                    w.readframes(w.getnframes())
            else:
                from decord import AudioReader, cpu

                ar = AudioReader(str(path), ctx=cpu(0), sample_rate=rate, mono=True)
                if ar.shape[-1] == 0:
                    return "no samples"
                ar[:].asnumpy()
        return None
    except Exception as e:  # noqa: BLE001 - any decoder error is a failure to report
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
