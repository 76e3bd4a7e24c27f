"""Writing a corpus folder, the part every corpus maker shares (demo.py, clipart.py).

A corpus maker plans its products (one spec each, cheap), then writes::

    out_dir/corpus.jsonl        one product per line (format: scalemm/corpus.py)
    out_dir/images/ videos/ audio/   the media, named by product id
    out_dir/corpus_stats.json   the maker's counts per modality, category sizes and more
    out_dir/.<kind>_corpus      a marker: the folder holds this maker's output

through :func:`make_products`: the folder is prepared (an earlier corpus of the same kind is
replaced, any other non-empty folder refused), a module-level ``make(job)`` writes each
product's media in forked worker processes and returns ``(index, record, extra)``, and the
records go to ``corpus.jsonl`` in job order; :func:`finish` writes the stats.
:func:`seeded_rng` gives each product its own generator, so the output does not depend on the
number of workers. :func:`decode_check` decodes a written corpus again and compares.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from scalemm.atomic import write_text_atomic
from scalemm.modalities import MODALITIES

from .media import decode_error

log = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl"
STATS_FILE = "corpus_stats.json"
MEDIA_DIRS = ("images", "videos", "audio")

Result = tuple[int, dict[str, Any], Any]  # (product index, JSONL record, what else the maker keeps)


@dataclass(frozen=True)
class CorpusKind:
    """A corpus maker's identity: its name, the generator tag and version in its stats and
    marker, the error class of its user errors and the extra files it writes."""

    name: str
    generator: str
    version: int
    error: type[Exception]
    extra_files: tuple[str, ...] = ()

    @property
    def marker(self) -> str:
        return f".{self.name}_corpus"

    @property
    def managed(self) -> tuple[str, ...]:
        """What the maker writes in its folder (and replaces when it runs again there)."""
        return (CORPUS_FILE, STATS_FILE, *self.extra_files, *MEDIA_DIRS, self.marker)


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator of one part of the corpus: seeded with ``(seed, *key)``."""
    return np.random.default_rng([int(seed), *[int(k) for k in key]])


def check_request(kind: CorpusKind, n_items: Any, seed: Any) -> tuple[int, int]:
    """``n_items`` (a positive integer) and ``seed`` (a non-negative one) as ints, or ``kind.error``."""
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise kind.error(f"n_items must be a positive integer, got {n_items!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise kind.error(f"seed must be a non-negative integer, got {seed!r}")
    return int(n_items), int(seed)


def prepare_folder(kind: CorpusKind, out: Path) -> None:
    """``out`` made ready: created, or emptied of an earlier corpus of this kind (other files are
    left alone); refused when it is a file or a non-empty folder without this kind's marker."""
    if out.exists() and not out.is_dir():
        raise kind.error(f"output path {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    entries = sorted(p.name for p in out.iterdir())
    if entries and kind.marker not in entries:
        raise kind.error(f"output directory {out} is not empty and holds no {kind.name} corpus "
                         f"(found {entries[0]!r}); choose a new or empty directory")
    for m in kind.managed:  # our own earlier output is replaced
        p = out / m
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (out / kind.marker).write_text(json.dumps({"generator": kind.generator, "version": kind.version}) + "\n")
    for d in MEDIA_DIRS:
        (out / d).mkdir()


def run_products(make: Callable[[Any], Result], jobs: Sequence[Any], workers: int, *, desc: str,
                 progress: bool = False, on_item: Callable[[int], None] | None = None,
                 chunksize: int = 2) -> list[Result]:
    """``make`` over the jobs, results in job order, in ``workers`` forked processes (in this
    one when 1 or where fork is not available); on an error or an interrupt the workers are
    stopped without waiting for the rest. ``on_item`` gets the number of products done."""
    from tqdm import tqdm

    fork = "fork" in mp.get_all_start_methods()
    pool = mp.get_context("fork").Pool(workers) if workers > 1 and fork else None
    out: list[Result] = []
    ok = False
    try:
        results = pool.imap(make, jobs, chunksize=chunksize) if pool else map(make, jobs)
        for r in tqdm(results, total=len(jobs), desc=desc, unit="item", disable=not progress):
            out.append(r)
            if on_item:
                on_item(len(out))
        ok = True
    finally:
        if pool:
            if ok:
                pool.close()
            else:
                pool.terminate()
            pool.join()
    return out


def make_products(kind: CorpusKind, out: Path, make: Callable[[Any], Result], jobs: Sequence[Any], *,
                  workers: int | None = None, progress: bool = False,
                  on_item: Callable[[int], None] | None = None, chunksize: int = 2) -> list[Result]:
    """Prepare ``out``, make every product (``workers`` processes; default up to 2, never more
    than the CPUs or the products) and write ``corpus.jsonl``; the results in job order."""
    prepare_folder(kind, out)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(int(workers), len(jobs)))
    results = run_products(make, jobs, workers, desc=f"{kind.name} corpus", progress=progress, on_item=on_item,
                           chunksize=chunksize)
    write_jsonl(out / CORPUS_FILE, [rec for _, rec, _ in results])
    return results


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def finish(kind: CorpusKind, out: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """Write ``corpus_stats.json`` and log the corpus's size; returns ``stats``."""
    write_text_atomic(out / STATS_FILE, json.dumps(stats, indent=1) + "\n")
    log.info("%s corpus: %d products, %d categories, %d instances -> %s",
             kind.name, stats["n_items"], stats["n_categories"], stats["n_instances"], out)
    return stats


# --------------------------------------------------------------------------- decode check


def decode_check(out_dir: str | Path) -> dict[str, Any]:
    """Decode every product's media with real decoders (PIL, decord, wave) and recount.

    Returns ``{"modalities": {m: {"ok", "failures", "absent"}}, "failure_ids": {m: [...]},
    "mismatches": [...]}`` where ``mismatches`` lists products whose decoding disagrees with
    ``corpus_stats.json`` (empty for a sound corpus).
    """
    from scalemm.corpus import read_corpus

    out = Path(out_dir)
    corpus = read_corpus(out / CORPUS_FILE, fmt="jsonl")
    stats_path = out / STATS_FILE
    expected = json.loads(stats_path.read_text()) if stats_path.is_file() else None
    counts, fail_ids = _decode_counts(out, corpus.products)
    mismatches = _mismatches(expected, counts, fail_ids) if expected is not None else []
    if corpus.bad:
        mismatches.append(f"{len(corpus.bad)} bad corpus records")
    return {"modalities": counts, "failure_ids": fail_ids, "mismatches": mismatches}


def _decode_counts(out: Path, products: Iterable[Any]) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    """Per modality: ok / failures / absent counts, and the ids that failed to decode."""
    counts = {m: {"ok": 0, "failures": 0, "absent": 0} for m in MODALITIES}
    fail_ids: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for p in products:
        srcs = {"image": p.image, "video": p.video, "audio": p.audio_source}
        for m in MODALITIES:
            if m == "text":
                present, err = p.title is not None, None
            elif m == "table":
                present, err = p.table is not None, None
            else:
                present = srcs[m] is not None
                err = decode_error(m, out / srcs[m]) if present else None
            key = "absent" if not present else ("failures" if err else "ok")
            counts[m][key] += 1
            if err:
                fail_ids[m].append(p.id)
    return counts, fail_ids


def _mismatches(expected: dict[str, Any], counts: dict[str, dict[str, int]],
                fail_ids: dict[str, list[str]]) -> list[str]:
    mismatches: list[str] = []
    for m in MODALITIES:
        if sorted(fail_ids[m]) != sorted(expected["expected_failure_ids"][m]):
            mismatches.append(f"{m}: decoded failures {fail_ids[m]} != expected {expected['expected_failure_ids'][m]}")
        e = expected["modalities"][m]
        got = (counts[m]["ok"], counts[m]["failures"], counts[m]["absent"])
        if got != (e["expected_ok"], e["expected_failures"], e["absent"]):
            mismatches.append(f"{m}: decoded ok/failures/absent {got} != expected "
                              f"{(e['expected_ok'], e['expected_failures'], e['absent'])}")
    return mismatches
