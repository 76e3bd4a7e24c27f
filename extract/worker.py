"""The two stages of the Ray Data pipeline: decode (CPU tasks) and encode (model actors).

Rows carry plain columns (ids, paths, title, table) plus two byte columns: ``media``
(decoded pixels and waveforms) after decoding and ``out`` (features) after encoding, each an
``.npz`` without pickles, and ``errors``: a JSON object modality -> reason.
"""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

import numpy as np

from scalemm.extract.config import ExtractConfig
from scalemm.extract.decode import DecodeConfig, DecodeError, decode_audio, decode_image, decode_video, resolve_media

log = logging.getLogger(__name__)


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- decoding

_POOL: ProcessPoolExecutor | None = None


def _pool() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        import multiprocessing as mp
        _POOL = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
    return _POOL


def _reset_pool() -> None:
    """Drop the decoder process, killing it if it still runs (a hung decoder must not keep a CPU)."""
    global _POOL
    if _POOL is not None:
        procs = list((getattr(_POOL, "_processes", None) or {}).values())
        _POOL.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.kill()
    _POOL = None


def _isolated(fn: Callable[..., np.ndarray], path: str, cfg: DecodeConfig, timeout: float) -> np.ndarray:
    """Run a native decoder in a child process: a crash there fails this item only."""
    for attempt in (1, 2):
        try:
            return _pool().submit(fn, path, cfg).result(timeout=timeout)
        except BrokenProcessPool:
            _reset_pool()
            if attempt == 2:
                raise DecodeError("decoder process crashed (native decoder fault)") from None
        except TimeoutError:
            _reset_pool()
            raise DecodeError(f"decoding took longer than {timeout:.0f} s; skipped") from None
    raise AssertionError("unreachable")


def decode_row(row: dict[str, Any], media_root: str, cfg: ExtractConfig) -> tuple[bytes, dict[str, str]]:
    dc = cfg.decode
    media: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    jobs = [("image", row["image"], decode_image, False), ("video", row["video"], decode_video, True),
            ("audio", row["audio_src"], decode_audio, True)]
    for modality, rel, fn, native in jobs:
        if not rel:
            continue
        try:
            path = str(resolve_media(media_root, rel))
            if native and cfg.isolate_decoders:
                media[modality] = _isolated(fn, path, dc, cfg.decode_timeout_s)
            else:
                media[modality] = fn(path, dc)
        except DecodeError as e:
            errors[modality] = str(e)
        except Exception as e:  # a decoder bug must not take the batch down
            errors[modality] = f"{type(e).__name__}: {e}"
    return pack(media), errors


def make_decoder(media_root: str, cfg: ExtractConfig) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        blobs, errs = [], []
        for i in range(n):
            row = {k: v[i] for k, v in batch.items()}
            b, e = decode_row(row, media_root, cfg)
            blobs.append(b)
            errs.append(json.dumps(e))
        out = dict(batch)
        out["media"] = np.array(blobs, dtype=object)
        out["errors"] = np.array(errs, dtype=object)
        return out

    return decode_batch


# ----------------------------------------------------------------------------- encoding

def pick_device(cfg: ExtractConfig) -> str:
    import torch
    if cfg.use_gpu == "no":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if cfg.use_gpu == "yes":
        raise RuntimeError("use_gpu: yes but no CUDA device is visible")
    return "cpu"


class Backbones:
    """The three loaded backbones of a config."""

    def __init__(self, cfg: ExtractConfig, device: str | None = None) -> None:
        from scalemm.extract.backbones import load_audio_backbone, load_image_backbone, load_text_backbone

        self.cfg = cfg
        self.device = device or pick_device(cfg)
        self.image = load_image_backbone(cfg.image, self.device)
        self.text = load_text_backbone(cfg.text, self.device, max_tokens=max(cfg.text_max_tokens, cfg.table_max_tokens))
        self.audio = load_audio_backbone(cfg.audio, self.device, cfg.sample_rate, cfg.audio_max_seconds)

    def infos(self) -> dict[str, dict[str, Any]]:
        """Per modality: spec, dim, pooled_dim, max_tokens, pretrained, weights_hash, preprocessing."""
        c = self.cfg
        img, txt, aud = self.image.info, self.text.info, self.audio.info
        vid_pre = dict(img.preprocessing, fps=c.video_fps, max_frames=c.video_max_frames, token="pooled frame")
        return {
            "image": dict(spec=img.spec, dim=img.dim, pooled_dim=img.pooled_dim, max_tokens=img.max_tokens,
                          pretrained=img.pretrained, weights_hash=img.weights_hash, preprocessing=img.preprocessing),
            "video": dict(spec=img.spec, dim=img.pooled_dim, pooled_dim=img.pooled_dim, max_tokens=c.video_max_frames,
                          pretrained=img.pretrained, weights_hash=img.weights_hash, preprocessing=vid_pre),
            "text": dict(spec=txt.spec, dim=txt.dim, pooled_dim=txt.pooled_dim, max_tokens=c.text_max_tokens,
                         pretrained=txt.pretrained, weights_hash=txt.weights_hash,
                         preprocessing=dict(txt.preprocessing, max_tokens=c.text_max_tokens)),
            "table": dict(spec=txt.spec, dim=txt.dim, pooled_dim=txt.pooled_dim, max_tokens=c.table_max_tokens,
                          pretrained=txt.pretrained, weights_hash=txt.weights_hash,
                          preprocessing=dict(txt.preprocessing, max_tokens=c.table_max_tokens,
                                             serialise="key: value; key: value")),
            "audio": dict(spec=aud.spec, dim=aud.dim, pooled_dim=aud.pooled_dim, max_tokens=aud.max_tokens,
                          pretrained=aud.pretrained, weights_hash=aud.weights_hash, preprocessing=aud.preprocessing),
        }

    def encode_rows(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, np.ndarray], dict[str, str]]]:
        """Features for decoded rows: per row a dict ``<modality>.<field>`` -> array, and errors."""
        c = self.cfg
        n = len(rows)
        feats: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        errors: list[dict[str, str]] = [dict(r["errors"]) for r in rows]

        def put(modality: str, idx: list[int], enc: Any) -> None:
            for j, i in enumerate(idx):
                feats[i][f"{modality}.tokens"] = enc.tokens[j].astype(np.float16)
                feats[i][f"{modality}.count"] = np.int32(enc.counts[j])
                feats[i][f"{modality}.pooled"] = enc.pooled[j].astype(np.float32)
                if getattr(enc, "entities", None) is not None:
                    feats[i][f"{modality}.entities"] = enc.entities[j]

        def guarded(modality: str, idx: list[int], run: Callable[[list[int]], Any]) -> None:
            """Encode a batch; if it fails, retry item by item so one bad input costs one record."""
            if not idx:
                return
            try:
                put(modality, idx, run(idx))
            except Exception:
                for i in idx:
                    try:
                        put(modality, [i], run([i]))
                    except Exception as e:
                        errors[i][modality] = f"encoder failed: {type(e).__name__}: {e}"

        # images and video frames go through the image backbone in one call
        img_idx = [i for i in range(n) if "image" in rows[i]["media"]]
        vid_idx = [i for i in range(n) if "video" in rows[i]["media"]]

        def run_images(idx: list[int]) -> Any:
            return self.image.encode(np.stack([rows[i]["media"]["image"] for i in idx]), c.batch_size * 4)

        def run_videos(idx: list[int]) -> Any:
            from scalemm.extract.backbones import Encoded
            frames = [rows[i]["media"]["video"] for i in idx]
            enc = self.image.encode(np.concatenate(frames), c.batch_size * 4)
            T, D = c.video_max_frames, self.image.info.pooled_dim
            tok = np.zeros((len(idx), T, D), np.float32)
            cnt = np.zeros(len(idx), np.int32)
            pooled = np.zeros((len(idx), D), np.float32)
            o = 0
            for j, f in enumerate(frames):
                k = min(len(f), T)
                tok[j, :k] = enc.pooled[o:o + k]
                cnt[j] = k
                pooled[j] = enc.pooled[o:o + len(f)].mean(0)
                o += len(f)
            return Encoded(tok, cnt, pooled)

        guarded("image", img_idx, run_images)
        guarded("video", vid_idx, run_videos)

        txt_idx = [i for i in range(n) if rows[i]["title"]]
        guarded("text", txt_idx, lambda idx: self.text.encode_texts([rows[i]["title"] for i in idx], c.text_max_tokens))
        tab_idx = [i for i in range(n) if rows[i]["table"]]
        guarded("table", tab_idx, lambda idx: self.text.encode_tables(
            [[tuple(kv) for kv in json.loads(rows[i]["table"])] for i in idx], c.table_max_tokens))
        aud_idx = [i for i in range(n) if "audio" in rows[i]["media"]]
        guarded("audio", aud_idx, lambda idx: self.audio.encode([rows[i]["media"]["audio"] for i in idx]))
        return list(zip(feats, errors))


class EncodeActor:
    """Ray Data actor: holds the loaded backbones, turns decoded rows into features."""

    def __init__(self, cfg_dict: dict[str, Any], threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.backbones = Backbones(ExtractConfig(**cfg_dict))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        rows = []
        for i in range(n):
            rows.append({"media": unpack(batch["media"][i]), "errors": json.loads(batch["errors"][i]),
                         "title": str(batch["title"][i]), "table": str(batch["table"][i])})
        results = self.backbones.encode_rows(rows)
        keep = {k: v for k, v in batch.items() if k not in ("media", "errors")}
        keep["out"] = np.array([pack(f) for f, _ in results], dtype=object)
        keep["errors"] = np.array([json.dumps(e) for _, e in results], dtype=object)
        return keep


def describe_backbones(cfg_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Load the backbones once (in a Ray task) and return their provenance per modality."""
    return Backbones(ExtractConfig(**cfg_dict), device="cpu").infos()


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
