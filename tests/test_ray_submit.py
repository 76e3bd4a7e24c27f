"""End to end: `ray job submit` of pipelines/extract.py to a private local head."""

import json
import sys

import pytest

from raycluster import RayHead
from cli_output import last_json


@pytest.mark.slow
def test_ray_job_submit_extracts_and_resumes(demo_corpus, tmp_path):
    out = tmp_path / "feats"
    args = ["pipelines/extract.py", "--corpus", str(demo_corpus / "corpus.jsonl"), "--media-root",
            str(demo_corpus), "--out", str(out), "--config", "configs/tiny.yaml"]
    with RayHead() as head:
        first = head.submit(*args)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        s1 = last_json(first.stdout)
        second = head.submit(*args)
        assert second.returncode == 0, second.stdout[-3000:]
        s2 = last_json(second.stdout)
    assert s1["items"] == 32 and s1["shards_written"] == 4 and s1["shards_skipped"] == 0
    assert s2["shards_written"] == 0 and s2["shards_skipped"] == 4
    stats = json.loads((demo_corpus / "corpus_stats.json").read_text())["modalities"]
    import subprocess
    info = json.loads(subprocess.run([sys.executable, "pipelines/store_info.py", str(out)], capture_output=True,
                                     text=True, check=True).stdout.splitlines()[-1])
    for m, e in stats.items():
        assert info["modalities"][m]["present"] == e["expected_ok"], m
    assert info["failures"] == s1["failures"] == sum(e["expected_failures"] for e in stats.values())
