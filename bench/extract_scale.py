"""Extraction at catalogue scale, measured (for ``pipelines/bench.py``).

:func:`scale_benchmark` makes a demo corpus of ``4N * (1 + grow)`` products and runs
``pipelines/extract.py`` as its own process (the driver alone: Ray runs in a private cluster
started beforehand, :mod:`scalemm.bench.cluster`):

* ``driver_rss_ratio`` / ``driver_cpu_ratio``: the driver process's peak RSS, and its CPU
  seconds per 1,000 items, for a fresh store of the first 4N products over the same for the
  first N (one node). Flat (<= 1.2) means the driver's cost does not grow with the corpus:
  no per-item Python objects, no feature bytes through it.
* ``append_time_ratio``: the 4N store grown by ``grow`` (a newer corpus, the 4N products
  and ``grow * 4N`` new ones from another demo corpus, :func:`grown_corpus`, extracted into it:
  only the new products are extracted) against a from-scratch extraction of the newer corpus,
  command wall time over command wall time, both on the same running cluster, one after the
  other. ``append_equal``: the grown store equals the from-scratch one (same live
  ids, bit-identical features, same failure records).
* ``two_node_equal``: a head and a worker node (one CPU each, joined with ``ray start
  --address``) extract the first N products; true when shards were written on both nodes
  and the store equals the one-node store of the same N.

A figure a run cannot measure is ``None`` with the reason next to it, never a number.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scalemm import store

log = logging.getLogger(__name__)


def store_difference(a: Path, b: Path) -> str | None:
    """Why the stores ``a`` and ``b`` differ in what a reader sees (live ids, tokens, counts,
    pooled vectors, entities, failure records), or None when they are equal."""
    sa, sb = store.open_stores(a), store.open_stores(b)
    for m in store.MODALITIES:
        da, db = sa[m].load(), sb[m].load()
        if sorted(da.ids) != sorted(db.ids) or len(set(da.ids)) != len(da.ids):
            return f"{m}: the live ids differ"
        at, bt = {i: r for r, i in enumerate(da.ids)}, {i: r for r, i in enumerate(db.ids)}
        ra, rb = np.array([at[i] for i in db.ids]), np.array([bt[i] for i in db.ids])
        for name in ("tokens", "counts", "pooled", "entities"):
            x, y = getattr(da, name), getattr(db, name)
            if (x is None) != (y is None) or (x is not None and not np.array_equal(x[ra], y[rb])):
                return f"{m}: {name} differ"

    def failures(d: Path) -> list[tuple]:
        recs = [json.loads(x) for x in (d / store.FAILURES).read_text().splitlines()]
        return sorted((str(f["id"]), f["modality"], f["error"]) for f in recs)
    if failures(a) != failures(b):
        return "the failure records differ"
    return None


def _load() -> list[float]:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else []


class Runner:
    """``pipelines/extract.py`` as a process against a running cluster; returns its summary
    line plus the command's wall time (``wall_s``)."""

    def __init__(self, root: Path, config: Path, media_root: Path, env: dict[str, str], address: str) -> None:
        self.root, self.config, self.media_root, self.env, self.address = root, config, media_root, env, address

    def __call__(self, corpus: Path, out: Path) -> dict[str, Any]:
        cmd = [sys.executable, str(self.root / "pipelines" / "extract.py"), "--corpus", str(corpus), "--media-root",
               str(self.media_root), "--out", str(out), "--config", str(self.config), "--address", self.address]
        t = time.perf_counter()
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"extraction failed (rc {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
        summary = json.loads([x for x in r.stdout.splitlines() if x.startswith("{")][-1])
        return {**summary, "wall_s": round(wall, 2)}


def _measured(what: str, fn: Callable[[], dict[str, Any]], outputs: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``fn()``, or ``{"skipped": reason}`` when it raised twice (the figures it gives are then not
    measured). A part that raises once (a private cluster that did not come up on a loaded machine,
    say) runs once more from scratch, its ``outputs`` removed first, and says so under ``retried``."""
    first = None
    for attempt in (1, 2):
        try:
            out = fn()
            return out if first is None else {**out, "retried": first}
        except Exception as e:  # a benchmark part that cannot run is reported, the others go on
            reason = f"{type(e).__name__}: {e}"[:300]
            if attempt == 2:
                log.warning("%s not measured: %s", what, reason)
                return {"skipped": reason, "first_attempt": first}
            log.warning("%s failed (%s); running it once more from scratch", what, reason)
            first = reason
            for path in outputs:
                shutil.rmtree(path, ignore_errors=True)
    raise AssertionError("unreachable")


def _subset(src: Path, dst: Path, n: int) -> Path:
    lines = [x for x in src.read_text().splitlines() if x.strip()]
    dst.write_text("\n".join(lines[:n]) + "\n")
    return dst


def grown_corpus(corpus_dir: Path, extra: int, seed: int, name: str = "more") -> Path:
    """A newer version of the demo corpus in ``corpus_dir``: its products, then ``extra`` new ones
    (another demo corpus, made under ``corpus_dir/name`` with ``seed``; ids and media paths
    prefixed with ``name``). Returns ``corpus_dir/grown.jsonl``; the media root stays ``corpus_dir``."""
    from scalemm.corpora.demo import make_corpus

    make_corpus(corpus_dir / name, extra, seed=seed)
    lines = [x for x in (corpus_dir / "corpus.jsonl").read_text().splitlines() if x.strip()]
    for x in (corpus_dir / name / "corpus.jsonl").read_text().splitlines():
        if x.strip():
            r = json.loads(x)
            r["id"] = f"{name}-{r['id']}"
            r.update({k: f"{name}/{r[k]}" for k in ("image", "video", "audio") if r.get(k)})
            lines.append(json.dumps(r))
    out = corpus_dir / "grown.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def scale_benchmark(root: Path, config: Path, n: int, work: str | Path, grow: float = 0.2, seed: int = 0,
                    cpus: int | None = None) -> dict[str, Any]:
    """See the module docstring. ``root``: the repository (for ``pipelines/extract.py``)."""
    from scalemm.bench.cluster import LocalCluster
    from scalemm.corpora.demo import make_corpus
    from scalemm.device import cpu_threads

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    big = 4 * n
    corpus_dir = work / "corpus"
    make_corpus(corpus_dir, big, seed=seed)
    base = corpus_dir / "corpus.jsonl"
    full = grown_corpus(corpus_dir, max(1, round(big * grow)), seed + 1)
    small = _subset(base, work / f"corpus_{n}.jsonl", n)
    total = sum(1 for x in full.read_text().splitlines() if x.strip())
    res: dict[str, Any] = {"n": n, "scale": 4, "grown_items": total, "config": str(config), "load_start": _load()}

    def one_node() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with LocalCluster(head_cpus=cpus or cpu_threads()) as c:
            run = Runner(root, config, corpus_dir, c.env(), c.address)
            out["job_n"] = run(small, work / "feats_n")
            out["job_4n"] = run(base, work / "feats_4n")
            out["load_before_timing"] = _load()
            out["scratch"] = run(full, work / "feats_scratch")
            out["append"] = run(full, work / "feats_4n")  # the 4N store, grown
            out["load_after_timing"] = _load()
        return out

    res["one_node"] = _measured("driver cost and append", one_node,
                                tuple(work / f for f in ("feats_n", "feats_4n", "feats_scratch")))

    def two_nodes() -> dict[str, Any]:
        with LocalCluster(head_cpus=1, worker_cpus=[1]) as c:
            return {"job_n": Runner(root, config, corpus_dir, c.env(), c.address)(small, work / "feats_two")}

    res["two_nodes"] = _measured("two-node extraction", two_nodes, (work / "feats_two",))
    res["load_end"] = _load()
    res.update(scale_figures(res, work))
    return res


def scale_figures(res: dict[str, Any], work: Path) -> dict[str, Any]:
    """The headline figures from the runs in ``res`` (None plus a reason where not measured)."""
    out: dict[str, Any] = {}
    one, two = res.get("one_node", {}), res.get("two_nodes", {})
    if "skipped" in one:
        why = one["skipped"]
        for k in ("driver_rss_ratio", "driver_cpu_ratio", "append_time_ratio", "append_equal"):
            out[k], out[k + "_why"] = None, why
    else:
        a, b = one["job_n"], one["job_4n"]
        per_k = [j["driver_cpu_s"] / j["items_processed"] * 1000 for j in (a, b)]
        out["driver_cpu_s_per_1000"] = [round(x, 3) for x in per_k]
        out["driver_peak_rss_mb"] = [a["driver_peak_rss_mb"], b["driver_peak_rss_mb"]]
        out["driver_cpu_ratio"] = round(per_k[1] / per_k[0], 3)
        # the part that grows with the corpus, apart from the fixed cost of a job
        out["driver_cpu_marginal_s_per_1000"] = round(
            (b["driver_cpu_s"] - a["driver_cpu_s"]) / max(b["items_processed"] - a["items_processed"], 1) * 1000, 3)
        if None in out["driver_peak_rss_mb"]:
            out["driver_rss_ratio"], out["driver_rss_ratio_why"] = None, "no /proc/self/status on this system"
        else:
            out["driver_rss_ratio"] = round(b["driver_peak_rss_mb"] / a["driver_peak_rss_mb"], 3)
        s, ap = one["scratch"], one["append"]
        out["append_extracted"] = ap["items_processed"]
        out["append_new"] = ap.get("new")
        out["append_seconds"] = [ap["wall_s"], s["wall_s"]]
        out["append_time_ratio"] = round(ap["wall_s"] / s["wall_s"], 3)
        diff = store_difference(work / "feats_4n", work / "feats_scratch")
        out["append_equal"] = diff is None and ap["items_processed"] == res["grown_items"] - 4 * res["n"]
        if diff:
            out["append_difference"] = diff
    if "skipped" in two or "skipped" in one:
        out["two_node_equal"] = None
        out["two_node_equal_why"] = two.get("skipped") or one.get("skipped")
    else:
        diff = store_difference(work / "feats_two", work / "feats_n")
        out["two_node_shard_nodes"] = two["job_n"]["nodes"]
        out["two_node_equal"] = diff is None and two["job_n"]["nodes"] == 2
        if diff:
            out["two_node_difference"] = diff
    return out


HEADLINE = ("driver_rss_ratio", "driver_cpu_ratio", "two_node_equal", "append_time_ratio", "append_equal")


def scale_rows(res: dict[str, Any]) -> list[tuple[str, Any, str | None]]:
    """(label, value, target key) rows for the benchmark table."""
    def val(k: str) -> Any:
        v = res.get(k)
        return f"not measured ({res.get(k + '_why', '?')[:80]})" if v is None else v

    n, big = res["n"], 4 * res["n"]
    rows: list[tuple[str, Any, str | None]] = []
    if "driver_cpu_s_per_1000" in res:
        rows += [(f"driver CPU s per 1,000 items, N={n} / 4N={big} (marginal: "
                  f"{res['driver_cpu_marginal_s_per_1000']:.3g})",
                  " / ".join(f"{x:.3g}" for x in res["driver_cpu_s_per_1000"]), None),
                 (f"driver peak RSS MB, N={n} / 4N={big}", " / ".join(str(x) for x in res["driver_peak_rss_mb"]), None)]
    rows += [("driver_cpu_ratio (per 1,000 items, 4N / N)", val("driver_cpu_ratio"), "driver_cpu_ratio"),
             ("driver_rss_ratio (peak, 4N / N)", val("driver_rss_ratio"), "driver_rss_ratio")]
    if "append_seconds" in res:
        rows.append((f"grown store: {res['append_extracted']} of {res['grown_items']} items extracted, "
                     f"s appended / from scratch", " / ".join(f"{x:.1f}" for x in res["append_seconds"]), None))
    rows += [("append_time_ratio (grown by 20%: append / from scratch)", val("append_time_ratio"), "append_time_ratio"),
             ("append_equal (appended store = from-scratch store)", val("append_equal"), None),
             ("two_node_equal (head + worker node, 1 CPU each; shards from both; = one node)",
              val("two_node_equal"), None)]
    return rows
