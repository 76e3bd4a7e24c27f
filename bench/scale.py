"""The scale benchmark (``pipelines/bench.py --scale``): training and evaluation at 100k and 1M
products on this machine.

For each size N (default 100,000 and 1,000,000):

* store: a synthetic scale store of N products (:mod:`corpora.scalestore`; reused from
  ``--work`` when it is there with the same parameters), its size and writing time;
* training: ``pipelines/train.py`` with the scaled-down model (``configs/scale_small.yaml``) for a
  fixed number of steps (``--steps``, not full epochs; the steps' batches come from shards all
  over the store, in the shuffled shard order of streaming), once in memory (a budget the store
  fits) and once streaming (a budget the store exceeds: 0.25 GB), alternated ``--rounds`` times,
  each in its own process: samples/s of the whole loop (the loader's start included) and the
  peak memory of the process and its loader workers (:class:`TreeMemory`). The streaming /
  in-memory ratio is the median over the rounds of each streaming run against the in-memory
  run just before it, which saw about the same load from the machine's other processes. Only
  the first run, the one evaluated, fits the modality heads after its loop (:mod:`fuse.heads`:
  outside the timed loop, inside its peak memory); the others train with ``modality_heads: []``;
* the embedding forward of that model with every token encoded and with the first tokens alone,
  side by side (:func:`embedding_pass`: what the evaluation's passes gain from encoding only what
  the embedding reads);
* evaluation: ``pipelines/evaluate.py`` of the first in-memory run on the whole store in its own
  process: minutes (and the embedding, catalogue-index and scoring minutes from metrics.json),
  peak memory, recall@10 of the catalogue index against exact search, the samples drawn.

Once: the two-worker check of the gathered negatives (:mod:`bench.gathercheck`, Ray Train with
2 gloo workers). Every training process runs with one thread (``OMP_NUM_THREADS=1``, ``threads:
1``): on this shared 2-core machine a second thread stalls at every parallel region whenever
another process holds a core. The evaluation runs alone and uses every core. The machine's
load (``os.getloadavg``) is recorded before and after each measurement. A figure the run
cannot measure is ``null`` with the reason beside it, never a number.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from statistics import median
from pathlib import Path
from typing import Any

import yaml

from scalemm.device import cpu_threads

log = logging.getLogger("bench.scale")

STREAM_BUDGET_GB = 0.25  # the streaming runs' memory budget: below every benchmarked store
MEMORY_BUDGET_GB = 64.0  # the in-memory runs': above every benchmarked store
# (key, comparison, threshold, description)
TARGETS = [
    ("train_peak_rss_gb_1m", "<=", 4.0, "training peak RSS at 1M products (the larger of in-memory and streaming)"),
    ("stream_vs_memory_samples_ratio", ">=", 0.9, "streaming / in-memory training samples/s at 1M"),
    ("eval_minutes_1m", "<=", 30.0, "evaluation of the 1M store, minutes"),
    ("eval_peak_rss_gb_1m", "<=", 12.0, "evaluation peak RSS at 1M products"),
    ("ann_recall@10_1m", ">=", 0.95, "catalogue index recall@10 vs exact at 1M"),
    ("gathered_negatives_equal", "==", True, "2 workers x B = 1 worker x 2B (loss, gradients)"),
]


def label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Peak memory of a process and its descendants, sampled every ``interval`` s: the sum of
    their RSS (counts pages shared by a forked loader worker twice: an upper bound) and of their
    PSS (shared pages split between the sharers)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss_kb = self.peak_pss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            self.peak_rss_kb = max(self.peak_rss_kb, sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_gb": round(self.peak_rss_kb / (1 << 20), 3), "peak_pss_gb": round(self.peak_pss_kb / (1 << 20), 3)}


def run_measured(cmd: list[str], cwd: Path, log_path: Path, threads: int = 1) -> dict[str, Any]:
    """Run ``cmd`` (with ``threads`` threads) with its memory sampled; its last stdout line parsed as JSON."""
    n = str(threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with open(log_path, "w") as err:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        mem = TreeMemory(p.pid)
        stdout, _ = p.communicate()
    seconds = time.perf_counter() - t0
    peak = mem.stop()
    if p.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {p.returncode}); see {log_path}:\n{tail}")
    return {"result": json.loads(stdout.strip().splitlines()[-1]), "seconds": round(seconds, 1), **peak,
            "load_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)]}


def store(work: Path, n: int, root: Path) -> dict[str, Any]:
    """The scale store of ``n`` products under ``work`` (written, or reused when its manifest has
    the same parameters)."""
    from scalemm.corpora.scalestore import ScaleStoreSpec
    from scalemm.store import read_manifest

    out = work / f"store-{label(n)}"
    spec = ScaleStoreSpec(n_items=n)
    man = read_manifest(out) if out.is_dir() else None
    if man is not None and man.get("spec") == spec.to_json() and (out / "failures.jsonl").is_file():
        size = sum(p.stat().st_size for p in out.rglob("*.h5"))
        return {"path": str(out), "reused": True, "items": n, "gb": round(size / 1e9, 3)}
    r = run_measured([sys.executable, str(root / "pipelines" / "make_scalestore.py"), "--out", str(out),
                      "--items", str(n), "--quiet"], root, work / f"store-{label(n)}.log")
    return {"path": str(out), "reused": False, **r["result"], "peak_rss_gb": r["peak_rss_gb"]}


def train_runs(work: Path, feats: str, n: int, steps: int, root: Path, rounds: int) -> dict[str, Any]:
    """``rounds`` x (in memory, streaming) training runs of ``steps`` steps; see the module doc."""
    from scalemm.fuse.config import ScaleConfig
    from scalemm.fuse.reader import FeatureDataset

    base = ScaleConfig.from_yaml(root / "configs" / "scale_small.yaml").to_dict()
    ds = FeatureDataset(feats, stream=True)
    store_gb = ds.nbytes / (1 << 30)
    out: dict[str, Any] = {"steps": steps, "store_token_gb": round(store_gb, 3), "memory": [], "stream": []}
    avail = _kb("/proc/meminfo", "MemAvailable:") / (1 << 20)
    modes = ["memory", "stream"]
    if store_gb * 1.2 + 1.5 > avail:
        out["memory_not_measured"] = (f"the store's {store_gb:.1f} GB of tokens do not fit the {avail:.1f} GB of "
                                      f"memory available")
        modes = ["stream"]
    for r in range(rounds):
        for mode in modes:
            cfg = {**base, "epochs": 1000, "runtime": {
                **base["runtime"], "max_steps": steps, "keep_checkpoints": 1,
                "memory_budget_gb": MEMORY_BUDGET_GB if mode == "memory" else STREAM_BUDGET_GB}}
            evaluated = r == 0 and mode == modes[0]  # the run eval_run embeds: out["evaluated_run"]
            if not evaluated:  # the heads' fit after the loop (about 50 s) serves only the evaluated run
                cfg["embedding"] = {**base.get("embedding", {}), "modality_heads": []}
            cfg_path = work / f"train-{label(n)}-{mode}{'' if evaluated else '-noheads'}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            run = work / f"train-{label(n)}-{mode}-{r}"
            if evaluated:
                out["evaluated_run"] = str(run)
            shutil.rmtree(run, ignore_errors=True)  # a --work reused for its store: runs start afresh
            res = run_measured([sys.executable, str(root / "pipelines" / "train.py"), "--features", feats,
                                "--out", str(run), "--config", str(cfg_path), "--no-progress"], root,
                               work / f"train-{label(n)}-{mode}-{r}.log")
            steps_log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
            steady = sorted(s["samples_per_s"] for s in steps_log[10:]) or [float("nan")]
            out[mode].append({"run": str(run), "samples_per_s": res["result"]["samples_per_s"],
                              "steady_samples_per_s": steady[len(steady) // 2], "steps": res["result"]["steps"],
                              "seconds": res["seconds"], "peak_rss_gb": res["peak_rss_gb"],
                              "peak_pss_gb": res["peak_pss_gb"], "load_before_after": res["load_before_after"]})
            log.info("train %s %s round %d: %.0f samples/s, peak RSS %.2f GB", label(n), mode, r,
                     res["result"]["samples_per_s"], res["peak_rss_gb"])
    for mode in ("memory", "stream"):
        if out[mode]:
            out[f"{mode}_samples_per_s"] = median([x["samples_per_s"] for x in out[mode]])
            out[f"{mode}_peak_rss_gb"] = max(x["peak_rss_gb"] for x in out[mode])
    if out["memory"]:
        # each streaming run against the in-memory run just before it: the two saw the same load
        out["paired_ratios"] = [round(s["samples_per_s"] / m["samples_per_s"], 3)
                                for m, s in zip(out["memory"], out["stream"])]
        out["stream_vs_memory_samples_ratio"] = median(out["paired_ratios"])
    return out


def embedding_pass(feats: str, root: Path) -> dict[str, Any]:
    """The embedding forward of the benchmark's model (``configs/scale_small.yaml``, one thread)
    with every token encoded against the first tokens alone, side by side
    (:func:`bench.fuse.embedding_pass_benchmark`): what the evaluation's passes gain from it."""
    from scalemm.bench.fuse import embedding_pass_benchmark
    from scalemm.fuse.config import ScaleConfig

    return embedding_pass_benchmark(feats, ScaleConfig.from_yaml(root / "configs" / "scale_small.yaml"))


def eval_run(work: Path, feats: str, checkpoint: str, n: int, root: Path) -> dict[str, Any]:
    """``pipelines/evaluate.py`` of ``checkpoint`` on the store; see the module doc."""
    out = work / f"eval-{label(n)}"
    shutil.rmtree(out, ignore_errors=True)
    res = run_measured([sys.executable, str(root / "pipelines" / "evaluate.py"), "--features", feats,
                        "--checkpoint", checkpoint, "--out", str(out)], root, work / f"eval-{label(n)}.log",
                       threads=cpu_threads())  # it runs alone: every core
    m = json.loads((out / "metrics.json").read_text())
    t = m["timings"]
    return {"checkpoint": checkpoint, "minutes": round(res["seconds"] / 60, 2), "peak_rss_gb": res["peak_rss_gb"],
            "peak_pss_gb": res["peak_pss_gb"],
            "embedding_minutes": round(t["embedding_s"] / 60, 2),
            "index_build_minutes": round(t["catalogue_index_s"] / 60, 2),
            "scoring_minutes": round(t["scoring_s"] / 60, 2),
            "main_process_peak_rss_gb_after": m["peak_rss_gb_after"],
            "catalogue_index": m["catalogue"], "ann_recall@10": m["index"]["ann_recall@10"], "samples": m["samples"],
            "scale_fine_mAP@1": m["methods"]["scale"]["fine"]["mAP@1"]["mean"],
            "scale_coarse_mAP@1": m["methods"]["scale"]["coarse"]["mAP@1"]["mean"],
            "concat_frozen_fine_mAP@1": m["methods"]["concat_frozen"]["fine"]["mAP@1"]["mean"],
            "load_before_after": res["load_before_after"], "out": str(out)}


def _headline(r: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """The figures of the issue's keys for 100k (``_100k``) and 1M (``_1m``; the ratio's key at 1M
    has no suffix); a figure not measured is None with ``<key>_not_measured`` saying why."""
    h: dict[str, Any] = {}
    for n in (100_000, 1_000_000):
        tag = label(n)
        s = r["sizes"].get(tag)
        ratio_key = "stream_vs_memory_samples_ratio" + ("" if n == 1_000_000 else f"_{tag}")
        keys = {f"train_peak_rss_gb_{tag}": None, ratio_key: None, f"eval_minutes_{tag}": None,
                f"eval_peak_rss_gb_{tag}": None, f"ann_recall@10_{tag}": None}
        if s is None:
            h.update(keys)
            h.update({f"{k}_not_measured": f"{n:,} products were not run (--sizes)" for k in keys})
            continue
        tr, ev = s["train"], s["eval"]
        h[f"train_peak_rss_gb_{tag}"] = max(tr.get("memory_peak_rss_gb", 0), tr.get("stream_peak_rss_gb", 0))
        if "stream_vs_memory_samples_ratio" in tr:
            h[ratio_key] = round(tr["stream_vs_memory_samples_ratio"], 3)
        else:
            h[ratio_key] = None
            h[f"{ratio_key}_not_measured"] = tr.get("memory_not_measured", "no in-memory run")
        h[f"eval_minutes_{tag}"] = ev["minutes"]
        h[f"eval_peak_rss_gb_{tag}"] = ev["peak_rss_gb"]
        h[f"ann_recall@10_{tag}"] = ev["ann_recall@10"]
    g = r.get("gather_check")
    h["gathered_negatives_equal"] = None if g is None else bool(g["equal"])
    if g is None:
        h["gathered_negatives_equal_not_measured"] = r.get("gather_check_error", "not run")
    return h


def _check(v: Any, op: str, th: Any) -> str:
    if v is None:
        return "not measured"
    if op == "==":
        return "PASS" if v == th else "MISS"
    return "PASS" if (v <= th if op == "<=" else v >= th) else "MISS"


def table(r: dict[str, Any]) -> str:
    rows = ["| products | metric | measured |", "|---|---|---|"]
    for tag, s in r["sizes"].items():
        st, tr, ev = s["store"], s["train"], s["eval"]
        add = lambda what, v: rows.append(f"| {tag} | {what} | {v} |")  # noqa: E731
        add("store GB on disk (write seconds)", f"{st['gb']} ({st.get('seconds', 'reused')})")
        if "memory_samples_per_s" in tr:
            add("training samples/s, in memory / streaming (median of runs)",
                f"{tr['memory_samples_per_s']:.0f} / {tr['stream_samples_per_s']:.0f}")
            add("streaming / in memory, each pair of runs (median)",
                f"{' '.join(str(x) for x in tr['paired_ratios'])} ({tr['stream_vs_memory_samples_ratio']:.3f})")
            add("training peak RSS GB, in memory / streaming", f"{tr['memory_peak_rss_gb']} / {tr['stream_peak_rss_gb']}")
        else:
            add("training samples/s, streaming", f"{tr['stream_samples_per_s']:.0f}")
            add("training peak RSS GB, streaming", tr["stream_peak_rss_gb"])
        ep = s.get("embedding_pass", {})
        if "every_over_first" in ep:
            add("embedding forward s per 1,000 products, every token / first tokens alone (one thread)",
                f"{ep['every_token_s_per_1k']:.2f} / {ep['first_tokens_s_per_1k']:.2f} ({ep['every_over_first']:.2f}x)")
        add("evaluation minutes (embedding / catalogue index / scoring)",
            f"{ev['minutes']} ({ev['embedding_minutes']} / {ev['index_build_minutes']} / {ev['scoring_minutes']})")
        add("evaluation peak RSS GB (PSS)", f"{ev['peak_rss_gb']} ({ev['peak_pss_gb']})")
        ci = ev["catalogue_index"]
        add("catalogue index, recall@10 vs exact", f"{ci['factory']} {ci['params'].get('efSearch', ci['params'].get('nprobe', ''))}, "
            f"{ev['ann_recall@10']:.4f}")
    rows += ["", "| key | measured | target | status |", "|---|---|---|---|"]
    for t in r["targets"]:
        rows.append(f"| {t['key']} | {t['value']} | {t['op']} {t['threshold']} | {t['status']} |")
    return "\n".join(rows)


def run_scale_bench(a: Any, root: Path) -> dict[str, Any]:
    """The whole scale benchmark for the parsed command line ``a`` (pipelines/bench.py --scale)."""
    import tempfile

    from scalemm.bench.main import machine_info

    t_all = time.perf_counter()
    sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else [100_000, 1_000_000]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    r: dict[str, Any] = {"mode": "scale", "machine": machine_info(), "threads_per_process": 1,
                         "load_start": [round(x, 2) for x in os.getloadavg()], "sizes": {}}
    try:
        try:
            from scalemm.bench.gathercheck import two_worker_check
            r["gather_check"] = two_worker_check(work=work)
        except Exception as e:  # noqa: BLE001 - reported as not measured, the rest still runs
            r["gather_check_error"] = f"{type(e).__name__}: {e}"
            log.warning("gather check failed: %s", r["gather_check_error"])
        for n in sizes:
            tag = label(n)
            st = store(work, n, root)
            log.info("%s: store %s", tag, st)
            tr = train_runs(work, st["path"], n, a.steps, root, a.rounds)
            ep = embedding_pass(st["path"], root)
            ev = eval_run(work, st["path"], tr["evaluated_run"], n, root)
            r["sizes"][tag] = {"store": st, "train": tr, "embedding_pass": ep, "eval": ev}
            log.info("%s: eval %.1f min, peak RSS %.2f GB, recall@10 %.4f", tag, ev["minutes"], ev["peak_rss_gb"],
                     ev["ann_recall@10"])
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    r["headline"] = _headline(r, sizes)
    r["targets"] = [{"key": k, "op": op, "threshold": th, "what": what, "value": r["headline"].get(k),
                     "status": _check(r["headline"].get(k), op, th)} for k, op, th, what in TARGETS]
    r["load_end"] = [round(x, 2) for x in os.getloadavg()]
    r["seconds"] = round(time.perf_counter() - t_all, 1)
    text = table(r)
    print(text, flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(r, indent=2, default=str))
    if a.md:
        a.md.write_text(text + "\n")
    return {"out": str(a.out), "mode": "scale", "seconds": r["seconds"], **r["headline"],
            "targets": {t["key"]: t["status"] for t in r["targets"]}}
