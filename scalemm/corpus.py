"""Corpus readers: our JSONL format and the M5Product release JSON.

JSONL, one product per line::

    {"id": "p0001", "label": "kettle", "instance": "i0042", "title": "...",
     "table": {"brand": "Acme", "color": "red"}   # or "brand#:#Acme#;#color#:#red"
     "image": "images/p0001.jpg", "video": "videos/p0001.mp4", "audio": "audio/p0001.wav"}

Media paths are relative to a media root; any of them may be missing. When ``audio`` is
missing and ``video`` is present, the audio modality comes from the video's sound track.

M5Product release JSON: ``{id: {"title", "label", "url", "video", "pv"}}`` where ``url`` and
``video`` are paths relative to the media root or URLs whose file name is looked up under it,
and ``pv`` is the table as ``key#:#value#;#key#:#value``.

CSV and Parquet catalogues, one column per field: ``--columns id=sku,title=name,image=img``
(:func:`parse_columns`) maps columns to the fields (id, label, instance, title, image, video,
audio, table; a field not mapped reads the column of its own name when there is one); every
other column becomes a table attribute (its name: the cell as text; empty cells left out)
unless excluded. :func:`iter_csv` and :func:`iter_parquet` stream the file (CSV blocks,
Parquet row groups); a bad row is a bad record at ``row N`` (data rows, 1-based, the header
not counted).

A bad record is reported (line number or id, and why) and skipped; the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from scalemm.errors import UserError

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 2000
TABLE_PAIR_SEP = "#;#"
TABLE_KV_SEP = "#:#"


class CorpusError(UserError, ValueError):
    """The corpus file as a whole cannot be read."""


@dataclass
class Product:
    id: str
    label: str = ""
    instance: str = ""
    title: str | None = None
    table: list[tuple[str, str]] | None = None
    image: str | None = None
    video: str | None = None
    audio: str | None = None  # None + video present: audio comes from the video
    line: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # modality -> why its value was unusable

    @property
    def audio_source(self) -> str | None:
        return self.audio or self.video


@dataclass
class BadRecord:
    where: str  # "line 12" or "id abc"
    error: str

    def as_failure(self) -> dict[str, Any]:
        return {"id": None, "modality": "record", "error": f"{self.where}: {self.error}"}


@dataclass
class Corpus:
    products: list[Product]
    bad: list[BadRecord] = field(default_factory=list)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.products)


def parse_table(value: Any) -> list[tuple[str, str]] | None:
    """A table from a dict, a list of pairs or the M5Product ``k#:#v#;#k#:#v`` string.

    Malformed pairs (no separator, empty key) are dropped; a table with no valid pair is None.
    """
    if value is None or value == "" or value == {}:
        return None
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        pairs = [(str(k).strip(), _scalar(v)) for k, v in value.items()]
    elif isinstance(value, list):
        for kv in value:
            if isinstance(kv, (list, tuple)) and len(kv) == 2:
                pairs.append((str(kv[0]).strip(), _scalar(kv[1])))
    elif isinstance(value, str):
        for chunk in value.split(TABLE_PAIR_SEP):
            if TABLE_KV_SEP not in chunk:
                continue
            k, v = chunk.split(TABLE_KV_SEP, 1)
            pairs.append((k.strip(), v.strip()))
    else:
        raise ValueError(f"table must be an object, a list of pairs or a string, got {type(value).__name__}")
    pairs = [(k, v) for k, v in pairs if k]
    return pairs or None


def _table_or_error(value: Any) -> tuple[list[tuple[str, str]] | None, str | None]:
    """A record's table and, when a non-empty value yields no pair, why (a table failure:
    the item's other modalities are kept)."""
    try:
        pairs = parse_table(value)
    except ValueError as e:
        return None, f"table not usable: {e}"
    if pairs is None and value not in (None, "", {}, []):
        return None, f"malformed table {str(value)[:80]!r}: no 'key#:#value' pair with a key"
    return pairs, None


def _scalar(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return "" if v is None else str(v)


def _clean_title(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"title must be a string, got {type(v).__name__}")
    v = v.strip()
    return v[:MAX_TITLE_CHARS] or None


def _media(v: Any, key: str) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ValueError(f"{key} must be a path string, got {type(v).__name__}")
    return v


def media_name_from_url(v: str) -> str:
    """A URL's file name (``https://x/y/abc.jpg?s=1`` -> ``abc.jpg``); paths are kept as they are."""
    if "://" in v:
        return Path(urlparse(v).path).name
    return v


def _utf8(v: Any) -> Any:
    """Strings made encodable as UTF-8: a JSON escape such as "\\ud800" (a lone surrogate)
    becomes '?', in nested lists and objects too (Arrow and HDF5 refuse such strings)."""
    if isinstance(v, str):
        return v.encode("utf-8", "replace").decode("utf-8")
    if isinstance(v, list):
        return [_utf8(x) for x in v]
    if isinstance(v, dict):
        return {_utf8(k): _utf8(x) for k, x in v.items()}
    return v


def _check_id(pid: Any) -> None:
    if pid is None or (isinstance(pid, str) and not pid.strip()):
        raise ValueError("missing 'id'")
    if not isinstance(pid, (str, int)):
        raise ValueError(f"'id' must be a string, got {type(pid).__name__}")
    if isinstance(pid, str) and _utf8(pid) != pid:
        raise ValueError(f"'id' {pid.encode('utf-8', 'replace').decode()!r} is not valid Unicode text")


def _product(obj: dict[str, Any], line: int) -> Product:
    pid = obj.get("id")
    _check_id(pid)
    obj = _utf8(obj)
    table, table_error = _table_or_error(obj.get("table"))
    return Product(
        id=str(pid), label=str(obj.get("label") or ""), instance=str(obj.get("instance") or ""),
        title=_clean_title(obj.get("title")), table=table,
        image=_media(obj.get("image"), "image"), video=_media(obj.get("video"), "video"),
        audio=_media(obj.get("audio"), "audio"), line=line,
        errors={"table": table_error} if table_error else {},
    )


def parse_jsonl_line(raw: bytes, n: int) -> Product | BadRecord:
    """One line (``n``, 1-based) of a JSONL corpus as a product, or why it is not one."""
    try:
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        return _product(obj, n)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        return BadRecord(f"line {n}", str(e))


def iter_jsonl(path: str | Path) -> Iterator[Product | BadRecord]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if raw.strip():
                yield parse_jsonl_line(raw, n)


def m5product_record(rec: dict[str, Any]) -> dict[str, Any]:
    """An M5Product release record (without its id) in our JSONL shape: ``url`` -> ``image`` and
    ``video`` as file names under the media root, ``pv`` -> ``table``."""
    def name(v: Any) -> Any:  # a value that is not a path string is kept, and refused by _product
        return media_name_from_url(v) if isinstance(v, str) and v else v
    return {"label": rec.get("label"), "instance": rec.get("instance"), "title": rec.get("title"),
            "table": rec.get("pv"), "image": name(rec.get("url")), "video": name(rec.get("video"))}


def load_m5product(path: str | Path) -> dict[str, Any]:
    """An M5Product release JSON: one object keyed by product id."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{path} is not valid M5Product JSON: {e}") from e
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: M5Product JSON must be an object keyed by product id")
    return data


def iter_m5product(path: str | Path, data: dict[str, Any] | None = None) -> Iterator[Product | BadRecord]:
    """The products of an M5Product release (``data``: the release already loaded)."""
    data = load_m5product(path) if data is None else data
    for n, (pid, rec) in enumerate(data.items(), start=1):
        try:
            if not isinstance(rec, dict):
                raise ValueError("record is not an object")
            yield _product({"id": pid, **m5product_record(rec)}, n)
        except ValueError as e:
            yield BadRecord(f"id {_utf8(pid)}", str(e))


def corpus_format(path: str | Path, fmt: str = "auto") -> str:
    """``jsonl``, ``m5product``, or a :class:`TableFormat` (``csv``, ``parquet``: ``fmt``'s column
    mapping kept) for an existing, non-empty corpus file (CorpusError otherwise). ``auto``: by
    the file's suffix, else sniffed (JSONL or M5Product)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {path} does not exist")
    if path.stat().st_size == 0:
        raise CorpusError(f"corpus file {path} is empty")
    kind = str(fmt)
    if kind == "auto":
        suffix = path.suffix.lower()
        kind = ("jsonl" if suffix in (".jsonl", ".ndjson") else TABLE_SUFFIXES.get(suffix) or _sniff(path))
    if kind in TABLE_KINDS:
        return TableFormat(kind, getattr(fmt, "columns", None), getattr(fmt, "exclude", ()))
    if isinstance(fmt, TableFormat) and (fmt.columns or fmt.exclude):
        raise CorpusError(f"{path} is read as {kind}: --columns and --exclude-columns are for CSV or Parquet "
                          f"catalogues; pass --format csv or parquet if it is one")
    return kind


def duplicate(pid: str, line: int, first_line: int) -> BadRecord:
    """The bad record of the product at ``line`` whose id ``pid`` the record at ``first_line`` has."""
    return BadRecord(f"line {line}", f"duplicate id {pid!r} (first at record {first_line}); skipped")


def read_corpus(path: str | Path, fmt: str = "auto") -> Corpus:
    """Read a corpus; duplicate ids are reported as bad records (the first one is kept)."""
    path = Path(path)
    fmt = corpus_format(path, fmt)
    it = iter_jsonl(path) if fmt == "jsonl" else iter_table(path, fmt) if fmt in TABLE_KINDS else iter_m5product(path)
    products: list[Product] = []
    bad: list[BadRecord] = []
    seen: dict[str, int] = {}
    for r in it:
        if isinstance(r, BadRecord):
            bad.append(r)
        elif r.id in seen:
            bad.append(duplicate(r.id, r.line, seen[r.id]))
        else:
            seen[r.id] = r.line
            products.append(r)
    for b in bad:
        log.warning("bad corpus record at %s: %s", b.where, b.error)
    if not products:
        raise CorpusError(f"corpus {path} has no valid product ({len(bad)} bad records)")
    return Corpus(products=products, bad=bad, path=path)


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip()
    # A JSONL file's first line is a whole object with an "id"; M5Product's is one big object.
    first = head.split(b"\n", 1)[0]
    try:
        obj = json.loads(first)
        if isinstance(obj, dict) and "id" in obj:
            return "jsonl"
    except json.JSONDecodeError:
        pass
    return "m5product"


# ----------------------------------------------------------------------------- CSV and Parquet catalogues

FIELDS = ("id", "label", "instance", "title", "image", "video", "audio", "table")
TABLE_KINDS = ("csv", "parquet")
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
TABLE_BATCH_ROWS = 8192  # rows per Parquet batch
CSV_BLOCK_BYTES = 4 << 20  # bytes per CSV block


class TableFormat(str):
    """``"csv"`` or ``"parquet"`` (it is that string) with the catalogue's column mapping:
    ``columns`` field -> column, ``exclude`` the columns left out of the table."""

    columns: dict[str, str]
    exclude: tuple[str, ...]

    def __new__(cls, kind: str, columns: dict[str, str] | None = None, exclude: Any = ()) -> "TableFormat":
        self = super().__new__(cls, kind)
        self.columns, self.exclude = dict(columns or {}), tuple(exclude or ())
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return TableFormat, (str(self), self.columns, self.exclude)


def parse_columns(spec: str | None) -> dict[str, str]:
    """``id=sku,title=name`` -> ``{"id": "sku", "title": "name"}`` (CorpusError when malformed)."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        field_, sep, column = (x.strip() for x in part.partition("="))
        if not sep or not field_ or not column:
            raise CorpusError(f"--columns: expected FIELD=COLUMN, got {part.strip()!r}")
        if field_ not in FIELDS:
            raise CorpusError(f"--columns: unknown field {field_!r}; the fields are {', '.join(FIELDS)}")
        if field_ in out:
            raise CorpusError(f"--columns: field {field_!r} mapped twice")
        out[field_] = column
    return out


def column_plan(names: list[str], fmt: TableFormat, path: str | Path) -> tuple[dict[str, str], list[str]]:
    """The columns a catalogue with column ``names`` is read by: field -> column (mapped, or
    the column of the field's own name) and the columns that become table attributes.
    CorpusError when a mapped or excluded column is not in the file, or no column is the id."""
    missing = [c for c in [*fmt.columns.values(), *fmt.exclude] if c not in names]
    if missing:
        raise CorpusError(f"{path}: no column {missing[0]!r}; its columns are {', '.join(names)}")
    fields = {f: fmt.columns.get(f, f) for f in FIELDS if fmt.columns.get(f, f) in names}
    if "id" not in fields:
        raise CorpusError(f"{path}: no 'id' column; name the products' id column with --columns id=COLUMN "
                          f"(its columns are {', '.join(names)})")
    used = set(fields.values()) | set(fmt.exclude)
    return fields, [c for c in names if c not in used]


def cell_text(v: Any) -> str | None:
    """A cell as table text; None for an empty or null cell."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    text = _scalar(v.decode("utf-8", "replace") if isinstance(v, bytes) else v).strip()
    return text or None


def table_record(row: dict[str, Any], fields: dict[str, str], extra: list[str]) -> dict[str, Any]:
    """A catalogue row in our JSONL shape (:func:`parse_jsonl_line`'s): the mapped fields (values
    as they are, checked by :func:`_product`; label and instance as text) and the extra
    columns as table attributes, after the pairs of a mapped table column."""
    rec = {f: row.get(c) for f, c in fields.items()}
    for k in ("label", "instance"):
        if k in rec:
            rec[k] = cell_text(rec[k]) or ""
    if isinstance(rec.get("id"), str):
        rec["id"] = rec["id"].strip()
    attrs = {c: t for c in extra if (t := cell_text(row.get(c))) is not None}
    if attrs:
        base, _ = _table_or_error(rec.get("table"))
        rec["table"] = [*(base or []), *attrs.items()]
    return rec


def table_rows(path: str | Path, fmt: TableFormat, batch_rows: int = TABLE_BATCH_ROWS,
               block_bytes: int = CSV_BLOCK_BYTES) -> Iterator[tuple[int, dict[str, Any] | BadRecord]]:
    """``(row, record)`` of every row of a CSV or Parquet catalogue in order (``record``: our
    JSONL shape, :func:`table_record`; a row CSV cannot parse is a BadRecord), streamed:
    Parquet by batches of ``batch_rows`` rows, CSV by blocks of ``block_bytes``."""
    rows = _parquet_rows(path, batch_rows) if fmt == "parquet" else _csv_rows(path, block_bytes)
    names = next(rows)
    fields, extra = column_plan(names, fmt, path)
    for n, row in rows:
        yield n, row if isinstance(row, BadRecord) else table_record(row, fields, extra)


def _parquet_rows(path: str | Path, batch_rows: int) -> Iterator[Any]:
    """The column names, then ``(row, {column: value})`` batch by batch."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError...: not a Parquet file
        raise CorpusError(f"{path} is not a readable Parquet file: {e}") from e
    yield list(pf.schema_arrow.names)
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError: a damaged row group
        raise CorpusError(f"{path}: cannot read the Parquet file after row {n}: {e}") from e


def _csv_header(path: str | Path) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise CorpusError(f"{path}: a CSV catalogue's first line names its columns; it is empty")
    if len(set(header)) != len(header):
        raise CorpusError(f"{path}: a column name is repeated in the header {header}")
    return header


def _csv_rows(path: str | Path, block_bytes: int) -> Iterator[Any]:
    """The column names, then ``(row, {column: text} or BadRecord)`` block by block: every cell
    read as text; a row of the wrong width is a bad record at its row."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    names = _csv_header(path)
    yield names
    bad: dict[int, BadRecord] = {}

    def invalid(r: Any) -> str:  # r.number: the file line (the header is line 1); threads off so it is known
        n = (r.number - 1) if r.number is not None else -len(bad) - 1
        bad[n] = BadRecord(f"row {n}" if n > 0 else "row ?",
                           f"{r.actual_columns} cells where the header has {r.expected_columns}")
        return "skip"

    try:
        reader = pcsv.open_csv(
            path, read_options=pcsv.ReadOptions(block_size=block_bytes, use_threads=False, encoding="utf8"),
            parse_options=pcsv.ParseOptions(invalid_row_handler=invalid, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in names}))
        n = 0
        for batch in reader:
            for row in batch.to_pylist():
                n += 1
                while n in bad:
                    yield n, bad.pop(n)
                    n += 1
                yield n, row
    except pa.ArrowInvalid as e:
        raise CorpusError(f"{path}: not a readable CSV file: {e}") from e
    for k in sorted(bad):
        yield k, bad[k]


def iter_table(path: str | Path, fmt: str = "auto", batch_rows: int = TABLE_BATCH_ROWS,
               block_bytes: int = CSV_BLOCK_BYTES) -> Iterator[Product | BadRecord]:
    """The products of a CSV or Parquet catalogue (``fmt``: a :class:`TableFormat` with its
    mapping, or ``csv`` / ``parquet`` / ``auto`` with the fields' own column names)."""
    fmt = fmt if isinstance(fmt, TableFormat) else TableFormat(str(fmt))
    if fmt == "auto":
        fmt = corpus_format(path, fmt)
    for n, rec in table_rows(path, fmt, batch_rows, block_bytes):
        yield rec if isinstance(rec, BadRecord) else table_product(rec, n)


def table_product(rec: dict[str, Any], row: int) -> Product | BadRecord:
    """A catalogue row's record (:func:`table_record`) as a product, or why it is not one."""
    try:
        return _product(rec, row)
    except ValueError as e:
        return BadRecord(f"row {row}", str(e))


def iter_csv(path: str | Path, columns: dict[str, str] | None = None, exclude: Any = (),
             block_bytes: int = CSV_BLOCK_BYTES) -> Iterator[Product | BadRecord]:
    """The products of a CSV catalogue (see :func:`iter_table`)."""
    return iter_table(path, TableFormat("csv", columns, exclude), block_bytes=block_bytes)


def iter_parquet(path: str | Path, columns: dict[str, str] | None = None, exclude: Any = (),
                 batch_rows: int = TABLE_BATCH_ROWS) -> Iterator[Product | BadRecord]:
    """The products of a Parquet catalogue (see :func:`iter_table`)."""
    return iter_table(path, TableFormat("parquet", columns, exclude), batch_rows=batch_rows)


# ----------------------------------------------------------------------------- the corpus of a store

COPY_DIR = "corpus"  # FEATS/corpus/: the JSONL copies the scan makes of other formats


def copy_name(fmt: str, fingerprint: str) -> str:
    """The name of the JSONL copy of an M5Product release or a CSV / Parquet catalogue (whose
    name also depends on its column mapping) with sha256 ``fingerprint`` in ``FEATS/corpus/``."""
    if isinstance(fmt, TableFormat):
        mapping = json.dumps([sorted(fmt.columns.items()), list(fmt.exclude)]).encode()
        return f"{fmt}-{fingerprint[:16]}-{hashlib.sha256(mapping).hexdigest()[:8]}.jsonl"
    return f"{'jsonl' if fmt == 'jsonl' else 'm5product'}-{fingerprint[:16]}.jsonl"


def store_corpus(features: str | Path) -> Path | None:
    """The JSONL the store ``features`` was last extracted from (its manifest's ``corpus``), as
    it can be read again: the scan's copy in ``FEATS/corpus/`` (of a JSONL corpus, an M5Product
    release or a CSV / Parquet catalogue; the newest, for a catalogue read with several column
    mappings), else, for a store written before JSONL corpora were copied, the file itself.
    None when there is neither (a corpus moved away)."""
    from scalemm.store import read_manifest

    man = read_manifest(features) or {}
    corpus, fp = man.get("corpus"), str(man.get("corpus_fingerprint") or "")
    copies = [p for p in (Path(features) / COPY_DIR).glob(f"*-{fp[:16]}*.jsonl")] if fp else []
    if copies:
        return max(copies, key=lambda p: p.stat().st_mtime)
    if corpus and Path(corpus).suffix.lower() in (".jsonl", ".ndjson") and Path(corpus).is_file():
        return Path(corpus)
    if corpus and Path(corpus).is_file():
        try:
            return Path(corpus) if corpus_format(corpus) == "jsonl" else None
        except CorpusError:
            return None
    return None
