"""pipelines/bench.py --quick end to end: writes the JSON with every headline figure."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("extract_efficiency", "extract_scaling", "extract_startup_s", "decode_items_per_s", "model_items_per_s",
        "write_mb_per_s", "loader_samples_per_s", "train_samples_per_s", "loader_headroom",
        "hdf5_read_mb_per_s", "raw_read_mb_per_s", "store_read_efficiency", "sdpa_speedup",
        "attention_peak_memory_ratio", "faiss_speedup", "ann_recall@10", "faiss_build_s")


@pytest.mark.slow
def test_bench_quick_writes_all_figures(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    p = subprocess.run([sys.executable, str(ROOT / "pipelines" / "bench.py"), "--quick", "--out", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    for k in KEYS:
        v = r["headline"][k]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (k, v)
    assert {t["key"] for t in r["targets"]} >= {"extract_scaling", "loader_headroom", "sdpa_speedup",
                                               "faiss_speedup", "ann_recall@10"}
    assert all(t["status"] in ("PASS", "MISS") for t in r["targets"])
    for section in ("machine", "extract", "store", "fusion", "index"):
        assert section in r
    assert r["machine"]["cores"] >= 1 and r["machine"]["torch"]
    last = json.loads(p.stdout.strip().splitlines()[-1])  # the CLI's last line is the JSON summary
    assert last["out"] == str(out)


@pytest.mark.slow
def test_bench_scale_writes_every_key_and_says_what_it_did_not_measure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    p = subprocess.run([sys.executable, str(ROOT / "pipelines" / "bench.py"), "--scale", "--sizes", "2000",
                        "--steps", "4", "--out", str(out), "--work", str(tmp_path / "w")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    h = r["headline"]
    assert h["gathered_negatives_equal"] is True
    s = r["sizes"]["2k"]
    assert s["train"]["memory_samples_per_s"] > 0 and s["train"]["stream_samples_per_s"] > 0
    assert 0 < s["train"]["memory_peak_rss_gb"] < 4 and 0 < s["eval"]["peak_rss_gb"] < 12
    assert 0.5 < s["eval"]["ann_recall@10"] <= 1 and s["eval"]["minutes"] > 0
    for tag in ("100k", "1m"):  # sizes not run: null, with the reason, never a number
        for key in ("train_peak_rss_gb", "eval_minutes", "eval_peak_rss_gb", "ann_recall@10"):
            assert h[f"{key}_{tag}"] is None and "not run" in h[f"{key}_{tag}_not_measured"]
    assert h["stream_vs_memory_samples_ratio"] is None and h["stream_vs_memory_samples_ratio_100k"] is None
    assert {t["status"] for t in r["targets"]} == {"PASS", "not measured"}
