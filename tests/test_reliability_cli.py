"""Reliability of the command lines: bad state on disk (a corrupt checkpoint, a truncated shard,
stores whose provenance does not fit, a NaN loss) and bad command lines (missing or empty
corpus, unknown backbone, an output directory that cannot be written, a Ray address that does
not answer) end with one ``error: ...`` line on stderr naming the thing to fix, a non-zero
exit code and no traceback, and leave the good data on disk as it was."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from scalemm import store
from fuse_helpers import tiny_config, write_synthetic_store

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def cli(script: str, *args: str, timeout: float = 120) -> tuple[int, str, str, float]:
    """Run a pipelines/ script in a fresh Python process: (exit code, stdout, stderr, seconds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SCALE_DEBUG")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.time()
    p = subprocess.run([sys.executable, str(ROOT / "pipelines" / script), *args], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr, time.time() - t0


LOG_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d(,\d+)? (INFO|WARNING) ")


def one_error_line(rc: int, out: str, err: str, *words: str) -> str:
    """Non-zero exit, no traceback, and one ``error:`` line on stderr: the last one, after
    at most the log records of the work done before the error was found."""
    assert rc != 0, (out, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), err
    assert all(LOG_RECORD.match(ln) for ln in lines[:-1]), err
    for w in words:
        assert w in lines[-1], (w, lines[-1])
    return lines[-1]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A small synthetic store and a 1-epoch run on it (two checkpoints: steps 1 and 2)."""
    import torch

    from scalemm.fuse.train import train

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("relcli")
    feats = base / "feats"
    write_synthetic_store(feats, n_items=24, missing=0.1, seed=11)
    train(feats, base / "run", tiny_config(epochs=1, checkpoint_unit="step", train_split="train", batch_size=6), progress=False)
    return feats, base / "run"


# ----------------------------------------------------------------------------- bad state

@pytest.mark.parametrize("part", ["weights", "state"])
def test_corrupt_checkpoint_names_the_file_and_keeps_the_run(run_cli, trained, tmp_path, part):
    feats, run = trained
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    ck = sorted((mine / "checkpoints").glob("*.safetensors" if part == "weights" else "*.state.pt"))[-1]
    ck.write_bytes(ck.read_bytes()[:200])  # cut short, as by a full disk
    before = snapshot(mine)
    rc, out, err, _ = run_cli("train.py", "--features", str(feats), "--out", str(mine), "--resume", "--no-progress")
    line = one_error_line(rc, out, err, ck.name, "delete")
    assert rc == 2, line
    assert snapshot(mine) == before  # nothing of the run was touched
    if part == "weights":
        rc, out, err, _ = run_cli("evaluate.py", "--features", str(feats), "--checkpoint", str(mine),
                              "--out", str(tmp_path / "eval"))
        one_error_line(rc, out, err, ck.name)
        assert snapshot(mine) == before


def test_truncated_shard_names_the_file(run_cli, trained, tmp_path):
    feats, run = trained
    mine = tmp_path / "feats"
    shutil.copytree(feats, mine)
    shard = mine / "text" / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[:2048])
    rc, out, err, _ = run_cli("train.py", "--features", str(mine), "--out", str(tmp_path / "r"), "--no-progress")
    one_error_line(rc, out, err, str(shard), "rerun extraction")
    assert not (tmp_path / "r").exists()
    rc, out, err, _ = run_cli("evaluate.py", "--features", str(mine), "--checkpoint", str(run),
                          "--out", str(tmp_path / "eval"))
    one_error_line(rc, out, err, str(shard))


def test_stores_whose_provenance_does_not_fit_are_refused(run_cli, trained, tmp_path):
    feats, run = trained
    mixed = tmp_path / "mixed"  # the text store comes from another corpus
    write_synthetic_store(mixed, n_items=24, seed=11, prov_overrides={"text": {"corpus_fingerprint": "another"}})
    rc, out, err, _ = run_cli("train.py", "--features", str(mixed), "--out", str(tmp_path / "r"), "--no-progress")
    one_error_line(rc, out, err, "corpus_fingerprint", "Re-extract")
    other = tmp_path / "other"  # a text backbone the model was not trained on
    write_synthetic_store(other, n_items=24, seed=11, prov_overrides={"text": {"backbone": "hf:another"}})
    before = snapshot(run)
    rc, out, err, _ = run_cli("evaluate.py", "--features", str(other), "--checkpoint", str(run),
                          "--out", str(tmp_path / "eval"))
    one_error_line(rc, out, err, "backbone", "hf:another")
    rc, out, err, _ = run_cli("train.py", "--features", str(other), "--out", str(run), "--resume", "--no-progress")
    one_error_line(rc, out, err, "backbone")
    assert snapshot(run) == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(run_cli, trained, tmp_path):
    feats, run = trained
    mine, poisoned = tmp_path / "run", tmp_path / "feats"
    shutil.copytree(run, mine)
    shutil.copytree(feats, poisoned)
    for m in store.MODALITIES:  # same provenance, NaN features
        for p in store.list_shards(poisoned, m):
            with h5py.File(p, "r+") as f:
                t = f["tokens"][()]
                t[...] = np.nan
                f["tokens"][...] = t
    from scalemm.fuse.checkpoint import latest_checkpoint

    good = latest_checkpoint(mine)
    before = snapshot(mine / "checkpoints")
    rc, out, err, _ = run_cli("train.py", "--features", str(poisoned), "--out", str(mine), "--resume", "--epochs", "3",
                          "--no-progress")
    line = one_error_line(rc, out, err, "diverged", "nan", "--resume", str(good.weights))
    assert rc == 3, line
    assert snapshot(mine / "checkpoints") == before


# ----------------------------------------------------------------------------- bad command lines

def _corpus(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / "corpus.jsonl"
    if kind == "empty":
        p.write_text("")
    elif kind == "no-valid":
        p.write_bytes(b"{not json\n\xff\xfe\n")
    else:
        p.write_text('{"id": "a", "title": "kettle"}\n')
    return p


@pytest.mark.parametrize("case,words", [
    ("missing-corpus", ["does not exist"]),
    ("empty-corpus", ["is empty"]),
    ("no-valid-record", ["no valid product"]),
    ("unknown-backbone", ["foo:bar"]),
    ("unknown-config-key", ["imgae"]),
    ("out-under-a-file", ["--out"]),
    ("dead-ray-address", ["127.0.0.1:1", "ray start"]),
])
def test_extract_cli_errors(run_cli, tmp_path, case, words):
    corpus = _corpus(tmp_path, {"empty-corpus": "empty", "no-valid-record": "no-valid"}.get(case, "good"))
    args = {"corpus": str(corpus), "out": str(tmp_path / "feats"), "config": str(TINY)}
    extra: list[str] = []
    if case == "missing-corpus":
        args["corpus"] = str(tmp_path / "nowhere.jsonl")
    elif case in ("unknown-backbone", "unknown-config-key"):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(TINY.read_text().replace("image: open_clip:tiny", "image: foo:bar" if case == "unknown-backbone"
                                                else "imgae: open_clip:tiny"))
        args["config"] = str(cfg)
    elif case == "out-under-a-file":
        (tmp_path / "file").write_text("x")
        args["out"] = str(tmp_path / "file" / "feats")
    elif case == "dead-ray-address":
        extra = ["--address", "127.0.0.1:1"]
    rc, out, err, secs = run_cli("extract.py", "--corpus", args["corpus"], "--out", args["out"],
                             "--config", args["config"], *extra)
    line = one_error_line(rc, out, err, *words)
    assert secs < 30, (secs, line)
    assert not (tmp_path / "feats").exists()  # refused before anything was written


@pytest.mark.parametrize("case,words", [
    ("missing-features", ["nowhere"]),
    ("empty-features", ["run pipelines/extract.py"]),
    ("unknown-config-key", ["warmpu_steps"]),
    ("out-under-a-file", ["--out"]),
    ("dead-ray-address", ["127.0.0.1:1"]),
])
def test_train_cli_errors(run_cli, trained, tmp_path, case, words):
    feats, _ = trained
    argv = ["--features", str(feats), "--out", str(tmp_path / "run"), "--no-progress"]
    if case == "missing-features":
        argv[1] = str(tmp_path / "nowhere")
    elif case == "empty-features":
        (tmp_path / "empty").mkdir()
        argv[1] = str(tmp_path / "empty")
    elif case == "unknown-config-key":
        (tmp_path / "c.yaml").write_text("lr: 1.0e-3\nwarmpu_steps: 3\n")
        argv += ["--config", str(tmp_path / "c.yaml")]
    elif case == "out-under-a-file":
        (tmp_path / "file").write_text("x")
        argv[3] = str(tmp_path / "file" / "run")
    elif case == "dead-ray-address":
        argv += ["--workers", "1", "--ray-address", "127.0.0.1:1"]
    rc, out, err, secs = run_cli("train.py", *argv)
    one_error_line(rc, out, err, *words)
    assert rc == 2 and secs < 30


@pytest.mark.parametrize("case,words", [
    ("missing-features", ["nowhere"]),
    ("missing-checkpoint", ["nocheckpoint"]),
    ("out-under-a-file", ["--out"]),
])
def test_evaluate_cli_errors(run_cli, trained, tmp_path, case, words):
    feats, run = trained
    argv = ["--features", str(feats), "--checkpoint", str(run), "--out", str(tmp_path / "eval")]
    if case == "missing-features":
        argv[1] = str(tmp_path / "nowhere")
    elif case == "missing-checkpoint":
        argv[3] = str(tmp_path / "nocheckpoint")
    else:
        (tmp_path / "file").write_text("x")
        argv[5] = str(tmp_path / "file" / "eval")
    rc, out, err, secs = run_cli("evaluate.py", *argv)
    one_error_line(rc, out, err, *words)
    assert secs < 30


def test_real_processes_fail_fast_with_one_line(trained, tmp_path):
    """The same, as separate processes: exit code, stderr and the time to fail for real."""
    feats, run = trained
    (tmp_path / "corpus.jsonl").write_text('{"id": "a", "title": "kettle"}\n')
    rc, out, err, secs = cli("extract.py", "--corpus", str(tmp_path / "corpus.jsonl"), "--out", str(tmp_path / "f"),
                             "--config", str(TINY), "--address", "127.0.0.1:1", timeout=60)
    one_error_line(rc, out, err, "no Ray cluster answers")
    assert rc == 2 and secs < 30
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    ck = sorted((mine / "checkpoints").glob("*.safetensors"))[-1]
    ck.write_bytes(b"\x00garbage")
    rc, out, err, secs = cli("train.py", "--features", str(feats), "--out", str(mine), "--resume", "--no-progress")
    one_error_line(rc, out, err, ck.name)
    assert rc == 2
    (tmp_path / "file").write_text("x")
    rc, out, err, secs = cli("evaluate.py", "--features", str(feats), "--checkpoint", str(run),
                             "--out", str(tmp_path / "file" / "eval"))
    one_error_line(rc, out, err, "is a file")
    assert rc == 2


def test_a_bug_is_one_line_that_points_to_its_traceback(tmp_path, monkeypatch, run_cli):
    """User errors are one line and exit 2 (above); an error of ours (here a bug planted in the
    store summary) is one line too, exit 1, naming a file that holds the full traceback."""
    import scalemm.extract.info

    def broken(root):
        return {"items": 1 / 0}

    monkeypatch.setattr(scalemm.extract.info, "store_info", broken)
    monkeypatch.setenv("SCALE_ERROR_DIR", str(tmp_path / "errors"))
    rc, out, err, _ = run_cli("store_info.py", str(tmp_path))
    line = one_error_line(rc, out, err, "internal error: ZeroDivisionError", "bug report")
    assert rc == 1
    logs = list((tmp_path / "errors").glob("store_info-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    text = logs[0].read_text()
    assert "Traceback" in text and "in broken" in text and "store_info.py" in text


def test_a_dead_ray_cluster_is_never_waited_for(tmp_path, monkeypatch):
    """Without --address Ray joins $RAY_ADDRESS, else the cluster last started with `ray start`
    on this machine (named in $RAY_TMPDIR/ray/ray_current_cluster), and waits for ever when it
    is gone: a killed head leaves that file behind. The job starts a local Ray instead, and a
    dead $RAY_ADDRESS is one clear error."""
    import socket

    from scalemm.ray_address import resolve_ray_address as ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert ray_address(None) is None  # no cluster ever started here: Ray starts a local one
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead}")
    assert ray_address(None) == "local"
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{live.getsockname()[1]}")
        assert ray_address(None) is None  # a live cluster is joined as before
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{dead}")
    with pytest.raises(ConnectionError, match="RAY_ADDRESS"):
        ray_address(None)
    assert ray_address("10.1.2.3:6379") == "10.1.2.3:6379"  # an explicit one is the CLI's to check
