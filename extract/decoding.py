"""A product's media decoded for the backbones, and the decode task of the extraction job.

A decode task gets a few of a shard's products as byte ranges of the corpus file (from the
scan, :mod:`scalemm.extract.scan`), reads and parses those lines itself and decodes each
product's image, video frames and sound track. So the product records never pass through
the driver; the corpus file, like the media, must be where every worker sees it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scalemm.corpus import BadRecord, Product, parse_jsonl_line
from scalemm.errors import UserError
from scalemm.extract.config import ExtractConfig
from scalemm.extract.decode import DecodeError, decode_audio, decode_image, decode_video, resolve_media
from scalemm.extract.isolated import _isolated


class CorpusChanged(UserError, RuntimeError):
    """The corpus file no longer holds, at a planned byte range, the product the scan saw there."""


def decode_product(p: Product, media_root: str, cfg: ExtractConfig) -> dict[str, Any]:
    """What the encoders need of one product: ``id``, ``label``, ``instance``, ``title``,
    ``table`` (pairs or None), ``media`` (modality -> decoded array) and ``errors`` (modality
    -> reason: the corpus record's own, e.g. a malformed table, then the decoders')."""
    dc = cfg.decode
    media: dict[str, np.ndarray] = {}
    errors: dict[str, str] = dict(p.errors)
    jobs = [("image", p.image, decode_image, False), ("video", p.video, decode_video, True),
            ("audio", p.audio_source, decode_audio, True)]
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
    return {"id": p.id, "label": p.label, "instance": p.instance, "title": p.title or "", "table": p.table,
            "media": media, "errors": errors}


def read_products(corpus: str, spans: np.ndarray) -> list[Product]:
    """The products at ``spans`` (rows of byte offset, byte length, line number) of a JSONL corpus."""
    out = []
    with open(corpus, "rb") as f:
        for offset, length, line in spans.tolist():
            f.seek(offset)
            r = parse_jsonl_line(f.read(length), line)
            if isinstance(r, BadRecord):
                raise CorpusChanged(f"{corpus} changed during extraction: {r.where} is now not a product "
                                    f"({r.error}); rerun to extract the new version")
            out.append(r)
    return out


def decode_lines(corpus: str, spans: np.ndarray, media_root: str, cfg_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """The decode task: :func:`decode_product` of each product at ``spans`` of the corpus."""
    cfg = ExtractConfig(**cfg_dict)
    return [decode_product(p, media_root, cfg) for p in read_products(corpus, spans)]
