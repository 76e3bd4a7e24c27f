"""The modality -> backbone routing: which backbone encodes which modality of a decoded product.

Images and video frames go through the image backbone (a video's tokens are its pooled frame
vectors), titles and tables through the text backbone (table tokens keep the key/value entity
they belong to), sound tracks through the audio backbone. One bad input costs one record: a
batch that fails is retried item by item.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from scalemm.device import pick_device
from scalemm.extract.config import ExtractConfig


class Backbones:
    """The three loaded backbones of a config."""

    def __init__(self, cfg: ExtractConfig, device: str | None = None) -> None:
        from scalemm.extract.backbones import load_audio_backbone, load_image_backbone, load_text_backbone

        self.cfg = cfg
        self.device = device or pick_device(cfg.use_gpu)
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
        """Features for decoded products (see :func:`scalemm.extract.decoding.decode_product`:
        ``media``, ``errors``, ``title``, ``table``): per row a dict ``<modality>.<field>`` ->
        array, and the row's errors with the encoders' added.

        Every backbone call has one shape whatever the rows (fixed batches of
        ``cfg.batch_size``, see :meth:`ImageBackbone.encode`), so an item's features do not
        depend on which other items share its shard: re-extracting a product, or extracting it
        into a grown catalogue, gives the same bits."""
        feats: list[dict[str, np.ndarray]] = [{} for _ in rows]
        errors: list[dict[str, str]] = [dict(r["errors"]) for r in rows]
        for modality, has, run in self._routes(rows):
            idx = [i for i, r in enumerate(rows) if has(r)]
            _encode_guarded(modality, idx, run, feats, errors)
        return list(zip(feats, errors))

    def _routes(self, rows: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], bool],
                                                               Callable[[list[int]], Any]]]:
        """Per modality, in encoding order: which rows have it, and how the rows at some indices
        are encoded (images and video frames by the image backbone, titles and tables by the
        text backbone, sound tracks by the audio backbone)."""
        c = self.cfg

        def media(m: str, idx: list[int]) -> list[np.ndarray]:
            return [rows[i]["media"][m] for i in idx]

        return [
            ("image", lambda r: "image" in r["media"],
             lambda idx: self.image.encode(np.stack(media("image", idx)), c.batch_size)),
            ("video", lambda r: "video" in r["media"], lambda idx: self._encode_videos(media("video", idx))),
            ("text", lambda r: bool(r["title"]),
             lambda idx: self.text.encode_texts([rows[i]["title"] for i in idx], c.text_max_tokens, c.batch_size)),
            ("table", lambda r: bool(r["table"]), lambda idx: self.text.encode_tables(
                [[tuple(kv) for kv in rows[i]["table"]] for i in idx], c.table_max_tokens, c.batch_size)),
            ("audio", lambda r: "audio" in r["media"], lambda idx: self.audio.encode(media("audio", idx))),
        ]

    def _encode_videos(self, frames: list[np.ndarray]) -> Any:
        """Videos as sequences of pooled frame vectors (at most ``video_max_frames``); a video's
        pooled vector is the mean over all its frames."""
        from scalemm.extract.backbones import EncodedBatch

        c = self.cfg
        enc = self.image.encode(np.concatenate(frames), c.batch_size)
        T, D = c.video_max_frames, self.image.info.pooled_dim
        tok = np.zeros((len(frames), T, D), np.float32)
        cnt = np.zeros(len(frames), np.int32)
        pooled = np.zeros((len(frames), D), np.float32)
        o = 0
        for j, f in enumerate(frames):
            k = min(len(f), T)
            tok[j, :k] = enc.pooled[o:o + k]
            cnt[j] = k
            pooled[j] = enc.pooled[o:o + len(f)].mean(0)
            o += len(f)
        return EncodedBatch(tok, cnt, pooled)


def _put(feats: list[dict[str, np.ndarray]], modality: str, idx: list[int], enc: Any) -> None:
    """Row ``idx[j]``'s features of ``modality`` from item j of ``enc``."""
    for j, i in enumerate(idx):
        feats[i][f"{modality}.tokens"] = enc.tokens[j].astype(np.float16)
        feats[i][f"{modality}.count"] = np.int32(enc.counts[j])
        feats[i][f"{modality}.pooled"] = enc.pooled[j].astype(np.float32)
        if getattr(enc, "entities", None) is not None:
            feats[i][f"{modality}.entities"] = enc.entities[j]


def _encode_guarded(modality: str, idx: list[int], run: Callable[[list[int]], Any],
                    feats: list[dict[str, np.ndarray]], errors: list[dict[str, str]]) -> None:
    """Encode a batch; if it fails, retry item by item so one bad input costs one record."""
    if not idx:
        return
    try:
        _put(feats, modality, idx, run(idx))
    except Exception:
        for i in idx:
            try:
                _put(feats, modality, [i], run([i]))
            except Exception as e:
                errors[i][modality] = f"encoder failed: {type(e).__name__}: {e}"


def describe_backbones(cfg_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Load the backbones of a config on the CPU and return their provenance per modality."""
    return Backbones(ExtractConfig(**cfg_dict), device="cpu").infos()
