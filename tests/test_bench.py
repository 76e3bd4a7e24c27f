"""pipelines/bench.py --quick end to end: writes the JSON with every headline figure, and no
ratio outside its physical bound (a ratio the run cannot support is null, with a reason).
Also the rules that decide it, on made-up timings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scalemm.bench.extract import job_ratios
from scalemm.bench.main import BOUNDS, check, fmt, within_bounds
from cli_output import last_json

ROOT = Path(__file__).resolve().parents[1]
RATES = ("extract_job_items_per_s", "extract_bare_items_per_s", "decode_items_per_s", "model_items_per_s",
         "write_mb_per_s", "loader_samples_per_s", "train_samples_per_s", "hdf5_read_mb_per_s", "raw_read_mb_per_s",
         "faiss_build_s")


@pytest.mark.slow
def test_bench_quick_writes_all_figures_and_no_impossible_ratio(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    home = tmp_path / "home"  # a new user's: empty, and nothing of Ray's auth in the environment
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}
    # smaller than `make bench` (the figures are not the point here, their form and bounds are)
    p = subprocess.run([sys.executable, str(ROOT / "pipelines" / "bench.py"), "--quick", "--items", "16",
                        "--sizes", "20000", "--out", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (home / ".ray").exists()  # its local Ray had a token of its own
    r = json.loads(out.read_text())
    h = r["headline"]
    for k in RATES:
        assert isinstance(h[k], (int, float)) and math.isfinite(h[k]) and h[k] > 0, (k, h[k])
    for k, (lo, hi) in BOUNDS.items():
        if h[k] is None:
            assert isinstance(r["not_measured"].get(k), str) and r["not_measured"][k], k
            assert f"{k} not measured: " in p.stdout  # said under the table
        else:
            assert lo < h[k] <= hi, (k, h[k])
    # the job never beats the same work without Ray, where the ratio is printed
    if h["extract_efficiency"] is not None:
        assert h["extract_job_items_per_s"] <= h["extract_bare_items_per_s"]
    ex = r["extract"]
    assert ex["bare_pipeline"]["items"] == ex["job_scaled"]["items"] == 64
    assert {t["key"] for t in r["targets"]} >= {"extract_scaling", "loader_headroom", "sdpa_speedup",
                                               "faiss_speedup", "ann_recall@10"}
    assert all(t["status"] in ("PASS", "MISS", "NOT MEASURED") for t in r["targets"])
    # extraction at scale: the driver's cost at N and 4N, a grown store and two nodes, all measured
    parts = {k: r["extract_scale"].get(k) for k in ("one_node", "two_nodes")}
    why = {k: {x: v[x] for x in ("skipped", "first_attempt", "retried") if x in v} for k, v in parts.items()}
    for k in ("driver_rss_ratio", "driver_cpu_ratio", "append_time_ratio"):
        assert isinstance(r["headline"][k], float) and r["headline"][k] > 0, (k, r["headline"][k], why, p.stderr[-2000:])
    assert r["headline"]["append_equal"] is True and r["headline"]["two_node_equal"] is True
    for section in ("machine", "extract", "store", "fusion", "index"):
        assert section in r
    # the train step, first tokens alone (the default) against every token, both timed
    tp = r["store"]["train_pass"]
    assert r["store"]["train"]["first_tokens_alone"] and tp["every_token_step_s"] > 0
    assert tp["every_over_first"] == pytest.approx(tp["every_token_step_s"] / tp["first_tokens_step_s"])
    assert "train-step speedup from encoding the first tokens alone" in p.stdout
    assert r["mode"] == "quick" and "Mode: quick" in p.stdout
    assert r["machine"]["cores"] >= 1 and r["machine"]["torch"]
    last = last_json(p.stdout)  # the CLI ends with its JSON summary
    assert last["out"] == str(out)


def job(items: int, seconds: float, failures: int = 0) -> dict:
    return {"items": items, "seconds": seconds, "items_per_s": items / seconds, "failures": failures}


def test_job_ratios_are_measured_when_the_sizes_support_them():
    r, why = job_ratios(job(256, 46.7), job(1024, 143.8), bare_items_per_s=9.5, scale=4)
    assert why == {}
    assert r["extract_scaling"] == pytest.approx(143.8 / 46.7)
    assert r["job_steady_items_per_s"] == pytest.approx(768 / (143.8 - 46.7))
    assert r["startup_s"] == pytest.approx((4 * 46.7 - 143.8) / 3)
    assert r["extract_efficiency"] == pytest.approx(1024 / 143.8 / 9.5)
    assert 0 < r["extract_efficiency_steady"] <= 1


def test_job_ratios_say_not_measured_instead_of_impossible_numbers():
    # the quick run: t(4N) < t(N) gave a steady rate of 4.8e10 items/s
    r, why = job_ratios(job(16, 7.2), job(64, 7.1), bare_items_per_s=30.0, scale=4)
    for k in ("extract_scaling", "job_steady_items_per_s", "startup_s", "extract_efficiency_steady"):
        assert r[k] is None and k in why, k
    assert "too small" in why["extract_scaling"] and "larger --items" in why["job_steady_items_per_s"]
    assert r["extract_efficiency"] == pytest.approx(64 / 7.1 / 30.0)  # still a fair ratio
    # 4N barely longer than N: within start-up noise
    r, why = job_ratios(job(16, 8.0), job(64, 8.9), bare_items_per_s=30.0, scale=4)
    assert r["extract_scaling"] == pytest.approx(8.9 / 8.0) and r["job_steady_items_per_s"] is None
    # a job faster than the same work without Ray: the machine's load changed
    r, why = job_ratios(job(16, 4.0), job(64, 10.0), bare_items_per_s=5.0, scale=4)
    assert r["extract_efficiency"] is None and "faster than the same work without Ray" in why["extract_efficiency"]
    # the intercept outside [0, t(N)]: the per-item cost differed between the jobs
    r, why = job_ratios(job(16, 2.0), job(64, 20.0), bare_items_per_s=50.0, scale=4)
    assert r["startup_s"] is None and "outside" in why["startup_s"] and r["job_steady_items_per_s"] is not None


def test_within_bounds_nulls_every_impossible_ratio():
    h = {"store_read_efficiency": 2.1, "ann_recall@10": 0.97, "extract_scaling": 0.8, "sdpa_speedup": float("nan"),
         "loader_headroom": 900.0, "faiss_speedup": 0.0}
    why: dict[str, str] = {}
    within_bounds(h, why)
    assert h["ann_recall@10"] == 0.97 and h["loader_headroom"] == 900.0
    for k in ("store_read_efficiency", "extract_scaling", "sdpa_speedup", "faiss_speedup"):
        assert h[k] is None and "physical bound" in why[k]
    assert check(None, ">=", 0.7) == "NOT MEASURED" and fmt(None) == "not measured"
    assert set(BOUNDS) >= {"extract_efficiency", "extract_scaling", "store_read_efficiency"}


@pytest.mark.slow
def test_bench_scale_writes_every_key_and_says_what_it_did_not_measure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    p = subprocess.run([sys.executable, str(ROOT / "pipelines" / "bench.py"), "--scale", "--sizes", "2000",
                        "--steps", "4", "--rounds", "2", "--out", str(out), "--work", str(tmp_path / "w")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    h = r["headline"]
    assert h["gathered_negatives_equal"] is True
    s = r["sizes"]["2k"]
    assert s["train"]["memory_samples_per_s"] > 0 and s["train"]["stream_samples_per_s"] > 0
    # two rounds (--rounds): the evaluated run (the first in memory) fits the modality heads; the
    # other three skip the fit
    runs = s["train"]["memory"] + s["train"]["stream"]
    heads = {Path(x["run"]).name: json.loads((Path(x["run"]) / "result.json").read_text())["heads"] for x in runs}
    assert Path(s["train"]["evaluated_run"]).name == "train-2k-memory-0"
    assert len(heads) == 4 and heads["train-2k-memory-0"]["modalities"], heads
    assert len(s["train"]["paired_ratios"]) == 2
    assert not any(h for name, h in heads.items() if name != "train-2k-memory-0"), heads
    assert s["eval"]["checkpoint"] == s["train"]["evaluated_run"]
    # the embedding forward, every token against the first tokens alone: the same vectors, both timed
    ep = s["embedding_pass"]
    assert ep["products"] > 0 and ep["every_token_s_per_1k"] > 0 and ep["first_tokens_s_per_1k"] > 0
    assert ep["max_abs_vector_difference"] < 1e-4 and ep["every_over_first"] == pytest.approx(
        ep["every_token_s_per_1k"] / ep["first_tokens_s_per_1k"])
    assert 0 < s["train"]["memory_peak_rss_gb"] < 4 and 0 < s["eval"]["peak_rss_gb"] < 12
    assert 0.5 < s["eval"]["ann_recall@10"] <= 1 and s["eval"]["minutes"] > 0
    for tag in ("100k", "1m"):  # sizes not run: null, with the reason, never a number
        for key in ("train_peak_rss_gb", "eval_minutes", "eval_peak_rss_gb", "ann_recall@10"):
            assert h[f"{key}_{tag}"] is None and "not run" in h[f"{key}_{tag}_not_measured"]
    assert h["stream_vs_memory_samples_ratio"] is None and h["stream_vs_memory_samples_ratio_100k"] is None
    assert {t["status"] for t in r["targets"]} == {"PASS", "not measured"}


def test_the_gpu_benchmark_says_what_it_did_not_measure(tmp_path: Path) -> None:
    """bench/gpu.py: without CUDA one error line and no file; FAISS without GPU support is recorded
    as not measured, with the reason, never as a number."""
    import torch

    from scalemm.bench import gpu

    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, "-m", "scalemm.bench.gpu", "--out", str(tmp_path / "g.json")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "no CUDA device" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "g.json").exists()
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        out = gpu.faiss_gpu(n=100, d=8, queries=10)
        assert set(out) == {"not_measured"} and "GPU" in out["not_measured"]


def test_a_benchmark_part_that_fails_once_runs_again_from_scratch_and_says_so(tmp_path: Path) -> None:
    from scalemm.bench.extract_scale import _measured

    out = tmp_path / "feats"
    calls = []

    def flaky() -> dict:
        calls.append(out.exists())  # the second attempt starts without the first one's output
        out.mkdir(exist_ok=True)
        if len(calls) == 1:
            raise RuntimeError("1 of 2 Ray nodes came up")
        return {"job": 1}

    r = _measured("flaky part", flaky, (out,))
    assert calls == [False, False] and r["job"] == 1 and "1 of 2 Ray nodes" in r["retried"]

    def broken() -> dict:
        raise RuntimeError(f"attempt {len(calls)}")

    calls.clear()
    r = _measured("broken part", lambda: calls.append(1) or broken(), (out,))
    assert len(calls) == 2 and r["skipped"] == "RuntimeError: attempt 2" and r["first_attempt"] == "RuntimeError: attempt 1"
