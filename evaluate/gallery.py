"""The retrieval gallery: a self-contained HTML page of sample queries and their top results.

Thumbnails are embedded as base64 JPEG (no file links), titles are escaped, and each result
is framed by whether it shares the query's category, and marked for the same instance.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from scalemm.atomic import write_text_atomic

log = logging.getLogger(__name__)


def thumbnail_data_uri(image_path: str | Path | None, size: int = 128) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail, or None if there is no readable image."""
    if not image_path:
        return None
    try:
        from PIL import Image

        with Image.open(image_path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError) as e:
        log.debug("no thumbnail for %s: %s", image_path, e)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_GALLERY_CSS = """
body{font-family:sans-serif;margin:1em;background:#fafafa}
.row{display:flex;gap:8px;align-items:flex-start;margin-bottom:18px;border-bottom:1px solid #ddd;padding-bottom:10px}
.card{width:140px;font-size:11px;background:#fff;padding:4px;border:3px solid #ccc;border-radius:4px}
.card.query{border-color:#336;background:#eef}
.card.hit{border-color:#2a2}.card.miss{border-color:#c22}
.thumb{width:128px;height:128px;object-fit:contain;display:block;margin:auto;background:#eee}
.noimg{width:128px;height:128px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
.title{max-height:4.2em;overflow:hidden}
.ok{color:#2a2;font-weight:bold}.no{color:#c22;font-weight:bold}.na{color:#888}
"""


def _card(pid: str, info: Mapping[str, Any], thumbs: dict[str, str | None], classes: str,
          marks: str, size: int) -> str:
    if pid not in thumbs:
        thumbs[pid] = thumbnail_data_uri(info.get("image"), size)
    uri = thumbs[pid]
    img = (f'<img class="thumb" src="{uri}" alt="">' if uri else '<div class="noimg">no image</div>')
    title = html.escape(str(info.get("title") or pid))
    return (f'<div class="card {classes}">{img}<div class="title" title="{title}">{title}</div>'
            f'<div>{html.escape(pid)}</div>{marks}</div>')


def write_gallery(es: Any, product_info: Mapping[str, Mapping[str, Any]], path: str | Path, *,
                  n_queries: int = 12, k: int = 10, seed: int = 0, thumb_size: int = 128,
                  neighbors: np.ndarray | None = None) -> Path:
    """Self-contained HTML page of sample queries and their top-``k`` results.

    ``es`` is an :class:`~evaluate.embeddings.EmbeddingSet`; ``product_info`` maps id to
    ``{"title": str, "image": absolute path or None}``. Each result card is framed green
    when it has the query's label and red otherwise, and marked for same label (``cat``)
    and same instance (``inst``; grey when the query has no instance). ``neighbors``
    (rows, [N, >= k+1], query included) defaults to exact inner-product search.
    """
    from scalemm.evaluate.index import exact_search
    from scalemm.evaluate.metrics import drop_self

    n = len(es)
    rng = np.random.default_rng(seed)
    labelled = [i for i in range(n) if es.labels[i]]
    with_img = [i for i in labelled if (product_info.get(es.ids[i]) or {}).get("image")]
    pool = with_img if len(with_img) >= n_queries else (labelled or list(range(n)))
    queries = np.sort(rng.choice(pool, size=min(n_queries, len(pool)), replace=False)) \
        if pool else np.zeros(0, np.int64)
    kk = min(k, max(n - 1, 0))
    if neighbors is None:
        _, nb = exact_search(es.vectors, es.vectors[queries], kk + 1) if len(queries) else (None, np.zeros((0, kk + 1), np.int64))
    else:
        nb = np.asarray(neighbors)[queries]
    ranked = drop_self(nb, queries, kk) if len(queries) else np.zeros((0, kk), np.int64)
    thumbs: dict[str, str | None] = {}
    rows_html: list[str] = []
    for qi, res in tqdm(list(zip(queries.tolist(), ranked)), desc="gallery", leave=False,
                        disable=len(queries) < 50):
        qid = es.ids[qi]
        qinfo = product_info.get(qid, {})
        cards = [_card(qid, qinfo, thumbs, "query",
                       f'<div>query · {html.escape(es.labels[qi])}</div>', thumb_size)]
        for r in res.tolist():
            if r < 0:
                continue
            same_label = bool(es.labels[qi]) and es.labels[r] == es.labels[qi]
            if es.instances[qi]:
                same_inst = es.instances[r] == es.instances[qi]
                inst = f'<span class="{"ok" if same_inst else "no"}">inst {"✓" if same_inst else "✗"}</span>'
            else:
                inst = '<span class="na">inst –</span>'
            marks = (f'<div><span class="{"ok" if same_label else "no"}">cat '
                     f'{"✓" if same_label else "✗"}</span> {inst}</div>')
            cards.append(_card(es.ids[r], product_info.get(es.ids[r], {}), thumbs,
                               "hit" if same_label else "miss", marks, thumb_size))
        rows_html.append('<div class="row">' + "".join(cards) + "</div>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Retrieval gallery</title>"
            f"<style>{_GALLERY_CSS}</style></head><body><h1>Retrieval gallery</h1>"
            f"<p>{len(queries)} sample queries (left) and their top-{kk} results by inner "
            "product; green frame: same category, red: other category; "
            "<b>inst</b>: same product instance.</p>" + "".join(rows_html) + "</body></html>")
    return write_text_atomic(path, page)
