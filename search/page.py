"""The local search page (``pipelines/serve.py``): a Starlette app with plain HTML, no JavaScript.

    GET  /               a search form (picture upload, title) and catalogue products to click
    GET  /?id=PID        the neighbours of catalogue product PID
    POST /search         the neighbours of an uploaded picture and / or a typed title
    GET  /media/PATH     a file under the catalogue's media root (anything else: 404)

Each result shows its picture, id, title, label and score; clicking one searches from it.
Safe by construction: a media path is resolved (symbolic links too) and served only when it
lies under the media root; an upload over ``max_upload_bytes`` is refused with 413 before it is
read whole; uploads go to a private temporary folder and are deleted after the query; nothing
is unpickled (the index is FAISS, the record JSON, the checkpoint safetensors).
"""

from __future__ import annotations

import html
import logging
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from scalemm.errors import UserError

from .engine import Hit, Searcher

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 << 20
BROWSE = 24  # catalogue products shown on the start page
STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:70em}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{width:170px;border:1px solid #ccc;padding:6px;font-size:13px}
.card img{width:160px;height:160px;object-fit:cover;background:#eee}.score{color:#555}.err{color:#b00}
form{margin-bottom:1em;padding:8px;border:1px solid #ddd}"""


def media_file(root: Path | None, rel: str) -> Path | None:
    """The file ``rel`` names under ``root``, or None when it is not a file under ``root``."""
    if root is None or not rel or "\x00" in rel:
        return None
    try:
        p = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if root not in p.parents or not p.is_file():
        return None
    return p


def _media_url(root: Path | None, image: str | None) -> str | None:
    if root is None or not image:
        return None
    try:
        rel = Path(image).resolve().relative_to(root)
    except ValueError:
        return None
    return "/media/" + quote(rel.as_posix())


def _cards(hits: Sequence[Hit], root: Path | None, show_score: bool = True, grid_id: str = "results") -> str:
    out = []
    for h in hits:
        url = _media_url(root, h.image)
        img = f'<img src="{url}" alt="{html.escape(h.id)}">' if url else '<div class="noimg">(no picture)</div>'
        score = f'<div class="score">score {h.score:.4f}</div>' if show_score else ""
        out.append(f'<div class="card" data-id="{html.escape(h.id)}"><a href="/?id={quote(h.id)}">{img}</a>'
                   f'<div>{h.rank}. <a class="pid" href="/?id={quote(h.id)}">{html.escape(h.id)}</a></div>'
                   f'<div class="title">{html.escape(h.title)}</div><div class="label">{html.escape(h.label)}</div>'
                   f'{score}</div>')
    return f'<div class="grid" id="{grid_id}">' + "".join(out) + "</div>"


def _page(body: str, title: str = "") -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>SCALE search</title><style>{STYLE}</style>"
            f"</head><body><h1><a href='/'>SCALE catalogue search</a></h1>"
            f"<form action='/search' method='post' enctype='multipart/form-data'>"
            f"Picture: <input type='file' name='image' accept='image/*'> "
            f"Title: <input type='text' name='title' size='50' value='{html.escape(title, quote=True)}'> "
            f"<button type='submit' id='go'>Search</button></form>{body}</body></html>")


def make_app(searcher: Searcher, k: int = 10, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> Starlette:
    """The search page over ``searcher``: ``k`` neighbours per query; uploads of at most
    ``max_upload_bytes``."""
    page = SearchPage(searcher, k, max_upload_bytes)
    app = Starlette(routes=[Route("/", page.home), Route("/search", page.search, methods=["POST"]),
                            Route("/media/{path:path}", page.media)])
    app.state.uploads = page.uploads  # deleted with the app
    return app


class SearchPage:
    """The page's three routes over one searcher (one query at a time through the model)."""

    def __init__(self, searcher: Searcher, k: int, max_upload_bytes: int) -> None:
        self.searcher, self.k, self.max_upload_bytes = searcher, k, max_upload_bytes
        self.cat = searcher.catalogue
        self.root = self.cat.media_root
        self.lock = threading.Lock()  # one query at a time through the model and backbones
        self.uploads = tempfile.TemporaryDirectory(prefix="scale-search-")

    def browse(self) -> list[Hit]:
        info = self.cat.info
        return [Hit(i + 1, pid, info.get(pid, {}).get("title") or "", info.get(pid, {}).get("label") or "",
                    0.0, info.get(pid, {}).get("image")) for i, pid in enumerate(self.cat.ids[:BROWSE])]

    def by_id(self, pid: str) -> list[Hit]:
        with self.lock:
            return self.searcher.by_id(pid, self.k)

    async def home(self, request: Request) -> Response:
        pid = request.query_params.get("id")
        if not pid:
            return HTMLResponse(_page(f"<h2>Catalogue ({len(self.cat.ids)} products): click one</h2>"
                                      + _cards(self.browse(), self.root, show_score=False, grid_id="catalogue")))
        try:
            hits = await run_in_threadpool(self.by_id, pid)
        except UserError as e:
            return HTMLResponse(_page(f"<p class='err'>{html.escape(str(e))}</p>"), status_code=404)
        info = self.cat.info.get(pid, {})
        url = _media_url(self.root, info.get("image"))
        head = (f"<h2>Products like <span id='query'>{html.escape(pid)}</span>: {html.escape(info.get('title') or '')}"
                f"</h2>" + (f"<img src='{url}' width='120'>" if url else ""))
        return HTMLResponse(_page(head + _cards(hits, self.root)))

    async def read_limited(self, request: Request) -> None:
        limit = self.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HTTPException(413, f"upload over {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"upload over {limit} bytes")
        request._body = bytes(body)  # the form parser reads it from here

    def query(self, image: Path | None, title: str | None) -> tuple[list[Hit], list[dict[str, Any]]]:
        from scalemm.extract.single import product

        with self.lock:
            found, failures = self.searcher.by_media([product("query", title, None, image)], self.k)
        return found[0], failures

    async def search(self, request: Request) -> Response:
        await self.read_limited(request)
        async with request.form(max_files=1, max_fields=4, max_part_size=self.max_upload_bytes) as form:
            title = str(form.get("title") or "").strip()
            upload = form.get("image")
            data = await upload.read() if upload is not None and hasattr(upload, "read") else b""
            suffix = re.sub(r"[^A-Za-z0-9.]", "", Path(getattr(upload, "filename", "") or "").suffix)[:8]
        if not data and not title:
            return HTMLResponse(_page("<p class='err'>Give a picture, a title, or both.</p>"), status_code=400)
        path = None
        try:
            if data:
                with tempfile.NamedTemporaryFile(dir=self.uploads.name, suffix=suffix, delete=False) as f:
                    f.write(data)
                    path = Path(f.name)
            hits, failures = await run_in_threadpool(self.query, path, title or None)
        except UserError as e:
            return HTMLResponse(_page(f"<p class='err'>{html.escape(str(e))}</p>", title), status_code=400)
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
        notes = "".join(f"<p class='err'>The {html.escape(f['modality'])} was left out: {html.escape(f['error'])}</p>"
                        for f in failures)
        what = " and ".join(x for x in ("the picture" if data else "", f"“{title}”" if title else "") if x)
        return HTMLResponse(_page(f"<h2>Products like {html.escape(what)}</h2>{notes}" + _cards(hits, self.root), title))

    async def media(self, request: Request) -> Response:
        p = media_file(self.root, request.path_params["path"])
        if p is None:
            raise HTTPException(404, "not found")
        return FileResponse(p)
