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
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    for k in KEYS:
        v = r["headline"][k]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (k, v)
    assert {t["key"] for t in r["targets"]} >= {"extract_scaling", "loader_headroom", "sdpa_speedup",
                                               "faiss_speedup", "ann_recall@10"}
    assert all(t["status"] in ("PASS", "MISS") for t in r["targets"])
    # extraction at scale: the driver's cost at N and 4N, a grown store and two nodes, all measured
    for k in ("driver_rss_ratio", "driver_cpu_ratio", "append_time_ratio"):
        assert isinstance(r["headline"][k], float) and r["headline"][k] > 0, (k, r["headline"][k])
    assert r["headline"]["append_equal"] is True and r["headline"]["two_node_equal"] is True
    for section in ("machine", "extract", "store", "fusion", "index"):
        assert section in r
    assert r["machine"]["cores"] >= 1 and r["machine"]["torch"]
    last = json.loads(p.stdout.strip().splitlines()[-1])  # the CLI's last line is the JSON summary
    assert last["out"] == str(out)
