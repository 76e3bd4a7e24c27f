"""The modality -> backbone routing: which backbone encodes which modality of a decoded product.

Images and video frames go through the image backbone (a video's tokens are its pooled frame
vectors), titles and tables through the text backbone (table tokens keep the key/value entity
they belong to), sound tracks through the audio backbone. One bad input costs one record: a
batch that fails is retried item by item.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from scalemm.extract.config import ExtractConfig
from scalemm.device import pick_device


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
            return self.image.encode(np.stack([rows[i]["media"]["image"] for i in idx]), c.batch_size)

        def run_videos(idx: list[int]) -> Any:
            from scalemm.extract.backbones import EncodedBatch
            frames = [rows[i]["media"]["video"] for i in idx]
            enc = self.image.encode(np.concatenate(frames), c.batch_size)
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
            return EncodedBatch(tok, cnt, pooled)

        guarded("image", img_idx, run_images)
        guarded("video", vid_idx, run_videos)

        txt_idx = [i for i in range(n) if rows[i]["title"]]
        guarded("text", txt_idx, lambda idx: self.text.encode_texts([rows[i]["title"] for i in idx], c.text_max_tokens,
                                                                    c.batch_size))
        tab_idx = [i for i in range(n) if rows[i]["table"]]
        guarded("table", tab_idx, lambda idx: self.text.encode_tables(
            [[tuple(kv) for kv in rows[i]["table"]] for i in idx], c.table_max_tokens, c.batch_size))
        aud_idx = [i for i in range(n) if "audio" in rows[i]["media"]]
        guarded("audio", aud_idx, lambda idx: self.audio.encode([rows[i]["media"]["audio"] for i in idx]))
        return list(zip(feats, errors))



def describe_backbones(cfg_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Load the backbones of a config on the CPU and return their provenance per modality."""
    return Backbones(ExtractConfig(**cfg_dict), device="cpu").infos()
