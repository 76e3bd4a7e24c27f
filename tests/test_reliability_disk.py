"""Errors of the machine, not of the code: a disk that fills in the middle of extraction (the
write fails in a Ray worker), of a training checkpoint and of the evaluation's outputs ends the
command with exit 2 and one ``error:`` line naming the path, "no space", what is intact and what
to do; nothing is written half; once space is freed the rerun (or resume) equals a clean run.

The full disk is a small tmpfs mounted for the test (CI runs as root); where mounting is
refused the tests are skipped, saying so. The other errnos (quota, file too large, read-only,
permission denied), raised in a Ray worker or chained, are checked through the command lines'
one error path (scalemm.cli.exit_for).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fuse_helpers import tiny_config, write_synthetic_store
from test_reliability_concurrent import error_line, same_store

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


class SmallDisk:
    """A tmpfs of ``size`` at ``path`` (``resize`` frees space by growing it); unmounted at the end."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill (needs root): {(r.stderr or r.stdout).strip()[:200]}")

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def close(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    disks: list[SmallDisk] = []

    def make(size: str) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", size))
        return disks[-1]
    yield make
    for d in disks:
        d.close()


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def no_space(line: str, under: Path) -> str:
    """The path the error line names (under ``under``), after "no space left on device at"."""
    assert line.startswith(f"error: no space left on device at {under}/"), line
    return line.split(" at ", 1)[1].split(";", 1)[0]


# ----------------------------------------------------------------------------- extraction

@pytest.fixture(scope="module")
def ray_local(extracted):  # after the session's reference extraction, which runs its own Ray
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_full_disk_during_extraction(ray_local, run_cli, extracted, demo_corpus, small_disk):
    """The store (0.7 MB) on a 400 kB disk: a model actor's shard write fails in the Ray worker
    (a modality's features or the failure part that commits the shard, whichever fills the disk)."""
    from scalemm import store

    ref, _ = extracted
    disk = small_disk("400k")
    out = disk.path / "feats"
    args = ["--corpus", str(demo_corpus / "corpus.jsonl"), "--media-root", str(demo_corpus), "--out", str(out),
            "--config", TINY]
    rc, _, err, _ = run_cli("extract.py", *args)
    assert rc == 2, err[-3000:]
    line = error_line(err)
    where = Path(no_space(line, out))
    # the file whose write ran out: one of a shard's modality files or its failure part (written
    # last, it commits the shard), named as committed, not by its temporary
    in_flight = [k for k in range(4) if where in [store.shard_path(out, m, k) for m in store.MODALITIES]
                 + [store.failure_part_path(out, k)]]
    assert len(in_flight) == 1, where
    assert f"the store {out} is intact (committed shards are kept; the shard in flight is not committed)" in line
    assert line.endswith("free space and rerun: the rerun resumes")
    # nothing half: no temporary file, the committed shards read back, the lock is released
    assert not temps(out) and not (out / ".writer.lock").exists()
    done = store.committed_shards(out)
    assert 1 <= len(done) < 4 and in_flight[0] not in done, (done, where)
    for k in done:
        for m in store.MODALITIES:
            store.read_shard(store.shard_path(out, m, k))
    disk.resize("8m")  # space freed: the rerun resumes and equals a clean run
    rc, stdout, err, _ = run_cli("extract.py", *args)
    assert rc == 0, err[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["shards_skipped"] == len(done) and summary["shards_written"] == 4 - len(done)
    same_store(out, ref)


# ----------------------------------------------------------------------------- training

TRAIN_YAML = """d_model: 32
heads: 4
encoder_layers: 1
fusion_layers: 1
batch_size: 4
epochs: 1
train_split: train
runtime:
  checkpoint_unit: step
  checkpoint_every: 1
  tensorboard: false
  threads: 1
"""


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("disk-feats") / "feats"
    write_synthetic_store(d, n_items=24, missing=0.1, seed=11)
    return d


def test_a_full_disk_while_a_checkpoint_is_written(run_cli, feats, small_disk, tmp_path):
    """A checkpoint is 1 MB (weights 0.4, state 0.6): the second does not fit on 1.6 MB."""
    import torch
    from safetensors.torch import load_file

    from scalemm.fuse.checkpoint import latest_checkpoint

    cfg = tmp_path / "train.yaml"
    cfg.write_text(TRAIN_YAML)
    ref = tmp_path / "ref"
    rc, _, err, _ = run_cli("train.py", "--features", str(feats), "--out", str(ref), "--config", str(cfg),
                            "--no-progress")
    assert rc == 0, err[-3000:]
    disk = small_disk("1600k")
    run = disk.path / "run"
    rc, _, err, _ = run_cli("train.py", "--features", str(feats), "--out", str(run), "--config", str(cfg),
                            "--no-progress")
    assert rc == 2, err[-3000:]
    line = error_line(err)
    where = no_space(line, run / "checkpoints")
    assert "step-00000002" in where, line
    assert "the last checkpoint is kept whole" in line and line.endswith("rerun with --resume: it goes on from "
                                                                        "the last checkpoint")
    # nothing half: no temporary file; latest.json names a whole checkpoint (step 1)
    assert not temps(run)
    ck = latest_checkpoint(run)
    assert ck.step == 1
    load_file(str(ck.weights))
    torch.load(ck.state, weights_only=True)
    disk.resize("8m")
    rc, stdout, err, _ = run_cli("train.py", "--features", str(feats), "--out", str(run), "--resume",
                                 "--no-progress")
    assert rc == 0, err[-3000:]
    a, b = load_file(str(latest_checkpoint(run).weights)), load_file(str(latest_checkpoint(ref).weights))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    la = [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (ref / "log.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, abs=1e-4)


# ----------------------------------------------------------------------------- evaluation

@pytest.fixture(scope="module")
def trained(feats) -> Path:
    import torch

    from scalemm.fuse.train import train

    torch.set_num_threads(1)
    run = feats.parent / "run"
    train(feats, run, tiny_config(epochs=1, checkpoint_unit="step", train_split="train", batch_size=6),
          progress=False)
    return run


def _whole(root: Path) -> None:
    """Every file under ``root`` reads back whole."""
    import faiss

    for p in root.rglob("*"):
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix in (".npz", ".npy"):
            np.load(p, allow_pickle=False)
        elif p.suffix == ".faiss":
            faiss.read_index(str(p))


def _summary(stdout: str) -> dict:
    s = json.loads(stdout.strip().splitlines()[-1])
    return {k: v for k, v in s.items() if k not in ("out", "seconds", "timings")}


@pytest.mark.usefixtures("one_faiss_thread")
def test_a_full_disk_while_the_evaluation_is_written(run_cli, feats, trained, small_disk, tmp_path):
    """The evaluation's outputs (0.6 MB: embeddings, indexes, plots, report) on a 256 kB disk."""
    base = ["--features", str(feats), "--checkpoint", str(trained), "--drop-draws", "1"]
    rc, clean, err, _ = run_cli("evaluate.py", *base, "--out", str(tmp_path / "eval"))
    assert rc == 0, err[-3000:]
    disk = small_disk("256k")
    out = disk.path / "eval"
    rc, _, err, _ = run_cli("evaluate.py", *base, "--out", str(out))
    assert rc == 2, err[-3000:]
    line = error_line(err)
    no_space(line, out)
    assert "nothing was written half" in line and line.endswith("free space and rerun")
    assert not temps(out)
    _whole(out)
    disk.resize("8m")
    rc, again, err, _ = run_cli("evaluate.py", *base, "--out", str(out))
    assert rc == 0, err[-3000:]
    assert _summary(again) == _summary(clean)


# ----------------------------------------------------------------------------- every errno, one path

def _ray_task_error(cause: BaseException) -> BaseException:
    """What ``ray.get`` raises for an exception in a worker: a RayTaskError that is also the cause's class."""
    from ray.exceptions import RayTaskError

    tb = f"Traceback (most recent call last):\n  File \"actor.py\", line 1, in write\n{type(cause).__name__}: {cause}"
    return RayTaskError("ShardEncoder.write", tb, cause, pid=1234, ip="10.0.0.7").as_instanceof_cause()


@pytest.mark.parametrize("code,what", [
    (errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "disk quota exceeded"),
    (errno.EFBIG, "file too large for its file system"), (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"), (errno.EPERM, "operation not permitted")])
@pytest.mark.parametrize("how", ["raised", "ray_worker", "chained"])
def test_every_error_of_the_machine_is_one_line_exit_2(monkeypatch, capsys, code, what, how):
    from scalemm.cli import exit_for

    e: BaseException = OSError(code, os.strerror(code), "/data/feats/image/shard-00003.h5")
    if how == "ray_worker":
        e = _ray_task_error(e)
    elif how == "chained":
        try:
            try:
                raise e
            except OSError as inner:
                raise RuntimeError("writing the shard failed") from inner
        except RuntimeError as outer:
            e = outer
    monkeypatch.setattr(sys, "argv", ["pipelines/extract.py", "--out", "/data/feats"])
    with pytest.raises(SystemExit) as ex:
        exit_for(e)
    err = capsys.readouterr().err
    assert ex.value.code == 2
    line = error_line(err)
    assert len(err.strip().splitlines()) == 1
    assert line.startswith(f"error: {what} at /data/feats/image/shard-00003.h5; the store is intact"), line


@pytest.mark.parametrize("message,path", [
    # what libraries that do not raise OSError say on a full disk
    ("Error while serializing: I/O error: No space left on device (os error 28)", "/run/x"),  # safetensors
    ("Error in void faiss::write_index(const Index*, IOWriter*, int) at index_write.cpp:499: Error: 'ret == "
     "(size * 4)' failed: write error in /eval/index/scale/index.faiss: 262099 != 512000 (No space left on device)",
     "/eval/index/scale/index.faiss"),  # FAISS
])
def test_a_full_disk_said_in_a_library_message_is_one_line(monkeypatch, capsys, message, path):
    from scalemm.cli import exit_for

    monkeypatch.setattr(sys, "argv", ["pipelines/evaluate.py", "--out", "/run/x"])
    with pytest.raises(SystemExit) as ex:
        exit_for(_ray_task_error(RuntimeError(message)))
    assert ex.value.code == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: no space left on device at ") and path in line, line


def test_a_write_that_fails_on_a_full_disk_names_its_file_not_a_temporary(small_disk):
    """replace_atomic: whatever the library said (torch.save says "unexpected pos"), the error is
    ENOSPC naming the target, and neither the target nor a temporary file is left."""
    import torch

    from scalemm.atomic import replace_atomic

    disk = small_disk("128k")
    target = disk.path / "state.pt"
    with pytest.raises(OSError) as ex:
        replace_atomic(target, lambda tmp: torch.save({"x": torch.ones(100_000)}, tmp))
    assert ex.value.errno == errno.ENOSPC and ex.value.filename == str(target)
    assert not list(disk.path.iterdir())
