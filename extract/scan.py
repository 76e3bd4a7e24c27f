"""The corpus scan: the corpus file read as a stream of byte ranges by Ray tasks, each product
parsed and fingerprinted on a worker.

The driver makes one pass over the file (its sha256 and the line count at about every
``chunk_bytes``; constant memory) and hands each range to a scan task. A task parses its
lines as :func:`scalemm.corpus.read_corpus` does and returns, per product, its line, id,
content fingerprint and byte range, as a small Arrow table (about 80 bytes a product), plus
the bad records. The driver never holds product records; the plan works on these columns,
and the decode tasks read the products again by byte range.

The content fingerprint decides whether a product already in a store must be extracted
again. It covers everything that shapes a product's features or stored fields: label,
instance, title, table (and why a table was refused) and the bytes of each media file (or
why the file cannot be read). A product whose image was replaced under the same name is
extracted again; one whose files were only renamed is not. It reads every media file once
per run (a few ms per product from the page cache; on a cold network file system it is the
scan's main cost).

An M5Product release JSON is one object and cannot be split into ranges: one task converts it
to JSONL in the store (``FEATS/corpus/m5product-<sha256>.jsonl``, reused while the release
file is the same) and the scan reads that. A CSV or Parquet catalogue is converted the same
way, streamed (CSV blocks, Parquet row groups: never the whole file in memory), into
``FEATS/corpus/<csv|parquet>-<sha256>-<mapping>.jsonl``: line N of the copy is the
catalogue's row N (a bad row leaves its line blank), so bad records and the copy agree on
row numbers. A JSONL corpus is copied as it is (``FEATS/corpus/jsonl-<sha256>.jsonl``, by a task
beside the scan): the store carries the titles and media paths of every product it holds, so
evaluation, the gallery and search need no corpus file (:func:`scalemm.corpus.store_corpus`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalemm.atomic import write_jsonl_atomic
from scalemm.corpus import (COPY_DIR, TABLE_KINDS, BadRecord, CorpusError, Product, TableFormat, copy_name,
                            corpus_format, iter_jsonl, iter_m5product, iter_table, parse_jsonl_line)
from scalemm.extract.decode import DecodeError, resolve_media
from scalemm.store import file_fingerprint

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
M5_DIR = COPY_DIR


def product_fingerprint(p: Product, media_root: str | Path) -> str:
    """blake2b-128 (hex) of what shapes the product's stored rows (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([p.label, p.instance, p.title, p.table, sorted(p.errors.items())]).encode())
    for slot, rel in (("image", p.image), ("video", p.video), ("audio", p.audio_source)):
        h.update(f"\0{slot}:".encode())
        if not rel:
            continue
        try:
            path = resolve_media(media_root, rel)
        except DecodeError as e:  # missing, empty, outside the root: the reason is the content
            h.update(b"!" + str(e).encode())
            continue
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as e:
            h.update(b"!" + str(e).encode())
    return h.hexdigest()


def corpus_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> tuple[list[tuple[int, int, int]], str]:
    """Byte ranges ``(start, end, first line)`` of about ``chunk_bytes`` that start at a line,
    and the file's sha256, in one pass."""
    h = hashlib.sha256()
    chunks: list[tuple[int, int, int]] = []
    start, start_line, pos, newlines = 0, 1, 0, 0  # newlines: between start and the scan point
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            i = 0
            while (want := start + chunk_bytes - pos) < len(block):
                cut = block.find(b"\n", max(want, i))
                if cut < 0:
                    break
                newlines += block.count(b"\n", i, cut + 1)
                chunks.append((start, pos + cut + 1, start_line))
                start, start_line, newlines, i = pos + cut + 1, start_line + newlines, 0, cut + 1
            newlines += block.count(b"\n", i)
            pos += len(block)
    if pos > start:
        chunks.append((start, pos, start_line))
    return chunks, h.hexdigest()


def scan_chunk(path: str, start: int, end: int, first_line: int, media_root: str) -> dict[str, Any]:
    """The scan task: products (line, id, fingerprint, offset, length) and bad records of one range."""
    import pyarrow as pa

    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    cols: dict[str, list] = {"line": [], "id": [], "fingerprint": [], "offset": [], "length": []}
    bad: list[tuple[int, str, str]] = []
    pos, line = 0, first_line
    while pos < len(data):
        nl = data.find(b"\n", pos)
        stop = len(data) if nl < 0 else nl + 1
        raw = data[pos:stop]
        if raw.strip():
            r = parse_jsonl_line(raw, line)
            if isinstance(r, BadRecord):
                bad.append((line, r.where, r.error))
            else:
                for k, v in (("line", line), ("id", r.id), ("fingerprint", product_fingerprint(r, media_root)),
                             ("offset", start + pos), ("length", stop - pos)):
                    cols[k].append(v)
        pos, line = stop, line + 1
    table = pa.table({"line": pa.array(cols["line"], pa.int64()), "id": pa.array(cols["id"], pa.string()),
                      "fingerprint": pa.array(cols["fingerprint"], pa.string()),
                      "offset": pa.array(cols["offset"], pa.int64()), "length": pa.array(cols["length"], pa.int64())})
    return {"products": table, "bad": bad}


def convert_m5product(path: str, dest: str) -> list[tuple[str, str]]:
    """The conversion task: the valid records of an M5Product release JSON as JSONL at ``dest``
    (atomically; the bad records next to it, written last). Returns the bad records."""
    from scalemm.corpus import load_m5product, m5product_record

    data = load_m5product(path)
    good, bad = [], []
    for r in iter_m5product(path, data):
        if isinstance(r, BadRecord):
            bad.append((r.where, r.error))
        else:
            good.append({"id": r.id, **m5product_record(data[r.id])})
    if good:
        write_jsonl_atomic(dest, good)
    write_jsonl_atomic(dest + ".bad", [{"where": w, "error": e} for w, e in bad])
    return bad


def convert_table(path: str, dest: str, fmt: TableFormat) -> list[tuple[str, str, int]]:
    """The conversion task of a CSV or Parquet catalogue: its valid rows as JSONL at ``dest``
    (atomically, streamed; line N is row N, blank for a bad row; none when no row is valid),
    then the bad records next to it. Returns the bad records."""
    from scalemm.atomic import replace_atomic
    from scalemm.corpus import table_product, table_rows

    bad: list[tuple[str, str, int]] = []
    good = 0

    def write(tmp: Path) -> None:
        nonlocal good
        with open(tmp, "w", encoding="utf-8") as f:
            for n, rec in table_rows(path, fmt):
                r = rec if isinstance(rec, BadRecord) else table_product(rec, n)
                if isinstance(r, BadRecord):
                    bad.append((r.where, r.error, n))
                    f.write("\n")
                else:
                    f.write(json.dumps({**rec, "id": r.id}, sort_keys=True, default=str) + "\n")
                    good += 1

    replace_atomic(dest, write)
    if not good:
        Path(dest).unlink()
    write_jsonl_atomic(dest + ".bad", [{"where": w, "error": e, "row": n} for w, e, n in bad])
    return bad


def copy_corpus(path: str, dest: str) -> None:
    """The copy task of a JSONL corpus: the file as it is at ``dest`` (atomically, streamed)."""
    import shutil

    from scalemm.atomic import replace_atomic

    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(dest, lambda tmp: shutil.copyfile(path, tmp))


def converted_path(out: Path, fmt: str, fingerprint: str) -> Path:
    """Where an M5Product release or a CSV / Parquet catalogue is converted to JSONL in the store
    ``out`` (a table's name also depends on its column mapping)."""
    return out / M5_DIR / copy_name(fmt, fingerprint)


def check_corpus(path: str | Path, fmt: str = "auto") -> str:
    """The corpus' format, once it is known to exist, be non-empty and (JSONL, CSV, Parquet) hold
    a product: a user error found before any Ray process starts. Reads up to the first valid
    record (a CSV or Parquet catalogue: its columns checked against the mapping first)."""
    fmt = corpus_format(path, fmt)
    if fmt == "jsonl" or fmt in TABLE_KINDS:
        bad = 0
        for r in (iter_jsonl(path) if fmt == "jsonl" else iter_table(path, fmt)):
            if isinstance(r, Product):
                return fmt
            bad += 1
        raise CorpusError(f"corpus {path} has no valid product ({bad} bad records)")
    return fmt


@dataclass
class ScanResult:
    """What the driver knows of a corpus: the file scanned (an M5Product release's JSONL copy),
    the user's file's sha256, one row per product in line order, the bad records in order."""

    corpus: Path
    corpus_fingerprint: str
    products: "pa.Table"  # noqa: F821  line, id, fingerprint, offset, length
    bad: list[tuple[int, BadRecord]] = field(default_factory=list)  # (sort key, record)


def scan_corpus(path: str | Path, media_root: str | Path, fmt: str, out: Path, cpus: float = 1.0,
                chunk_bytes: int = CHUNK_BYTES, options: dict[str, Any] | None = None) -> ScanResult:
    """Scan a corpus with Ray tasks of ``cpus`` CPUs each and Ray ``options`` (the job's
    placement group: Ray must be initialised; the model actors may already hold the rest);
    CorpusError when it has no product."""
    import pyarrow as pa
    import ray
    from tqdm import tqdm

    path = Path(path)
    fmt = corpus_format(path, fmt)
    bad: list[tuple[int, BadRecord]] = []
    if fmt == "m5product" or fmt in TABLE_KINDS:
        fingerprint = file_fingerprint(path)
        src = converted_path(out, fmt, fingerprint)
        side = Path(str(src) + ".bad")
        if not side.exists():  # written last: the conversion finished
            src.parent.mkdir(parents=True, exist_ok=True)
            convert, args = (convert_m5product, ()) if fmt == "m5product" else (convert_table, (fmt,))
            ray.get(ray.remote(convert).options(num_cpus=cpus, **(options or {})).remote(str(path), str(src), *args))
        bad = [(r.get("row", 0), BadRecord(r["where"], r["error"]))  # a table's row: its line in the copy
               for r in map(json.loads, side.read_text().splitlines())]
        if not src.exists():
            raise CorpusError(f"corpus {path} has no valid product ({len(bad)} bad records)")
        chunks, _ = corpus_chunks(src, chunk_bytes)
    else:
        src = path
        chunks, fingerprint = corpus_chunks(src, chunk_bytes)
    copied = None
    if fmt == "jsonl" and not converted_path(out, fmt, fingerprint).exists():  # the store's copy, beside the scan
        copied = ray.remote(copy_corpus).options(num_cpus=cpus, **(options or {})).remote(
            str(path), str(converted_path(out, fmt, fingerprint)))
    task = ray.remote(scan_chunk).options(num_cpus=cpus, **(options or {}))
    refs = [task.remote(str(src), a, b, line, str(media_root)) for a, b, line in chunks]
    parts = []
    with tqdm(total=len(refs), desc="scan", unit="chunk", disable=len(refs) < 4) as bar:
        for ref in refs:  # in order: the products stay in line order
            parts.append(ray.get(ref))
            bar.update(1)
    if copied is not None:
        ray.get(copied)
    products = pa.concat_tables([p["products"] for p in parts])
    bad += [(line, BadRecord(where, err)) for p in parts for line, where, err in p["bad"]]
    if products.num_rows == 0:
        raise CorpusError(f"corpus {path} has no valid product ({len(bad)} bad records)")
    return ScanResult(Path(src), fingerprint, products, bad)
