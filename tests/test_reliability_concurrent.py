"""Several jobs on one cluster, several writers on one store.

* Extraction jobs into different stores, submitted together to one 2-CPU cluster (and three to
  the benchmarks' two-node cluster), all finish, and each store equals a clean single run: each
  job reserves its actors' and decode tasks' CPUs in one placement group and waits as a whole,
  saying what for; a job that cannot get them gives up after --wait-timeout with one line.
* One writer per store (scalemm/store/lock.py): a second job into a store being written refuses
  at once naming the first; a lock whose writer was killed (dead pid, expired lease) is taken
  over and the takeover logged; racing takers: exactly one wins.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scalemm import store

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SCALE_DEBUG")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


def error_line(err: str) -> str:
    """The last non-blank line of stderr, which must be the one ``error:`` line; no traceback of ours."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), err[-3000:]
    assert "bug report" not in err and "Traceback" not in "\n".join(ln for ln in lines if "pid=" not in ln), err
    return lines[-1]


def same_store(out: Path, ref: Path) -> None:
    """What a reader sees of ``out`` equals ``ref`` for ``out``'s products (as test_extract_append
    compares stores): the same ids, bit-identical tokens, counts, pooled vectors and entities, the
    same failures."""
    def by_id(root: Path) -> dict:
        res = {}
        for m, s in store.open_stores(root).items():
            d = s.load()
            assert len(set(d.ids)) == len(d.ids), m
            res[m] = {i: (d.tokens[r], d.counts[r], d.pooled[r], None if d.entities is None else d.entities[r])
                      for r, i in enumerate(d.ids)}
        return res

    a, b = by_id(out), by_id(ref)
    for m in store.MODALITIES:
        assert a[m].keys() and set(a[m]) <= set(b[m]), m
        for i in a[m]:
            for x, y in zip(a[m][i], b[m][i]):
                assert (x is None and y is None) or np.array_equal(x, y), (m, i)
    ids = set(a["text"])

    def fails(d: Path) -> list[tuple]:
        return sorted((f["id"], f["modality"], f["error"]) for f in store.read_failures(d) if f["id"] in ids)
    assert fails(out) == fails(ref)
    assert not (out / ".writer.lock").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


# ----------------------------------------------------------------------------- the writer lock

def _hold_lock(folder: str, job: str, ready, stop) -> None:  # a writer in another process
    from scalemm.store.lock import StoreLock

    with StoreLock(folder, ray_job_id=job):
        ready.set()
        stop.wait(60)


def test_a_second_writer_is_refused_at_once_naming_the_first(demo_corpus, tmp_path):
    out = tmp_path / "feats"
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out), "05000000", ready, stop))
    holder.start()
    try:
        assert ready.wait(60)
        t0 = time.time()
        p = subprocess.run([sys.executable, str(ROOT / "pipelines" / "extract.py"), "--corpus",
                            str(demo_corpus / "corpus.jsonl"), "--out", str(out), "--config", TINY],
                           capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)
        secs = time.time() - t0
    finally:
        stop.set()
        holder.join(30)
    assert p.returncode == 2 and secs < 10, (p.returncode, secs, p.stderr[-2000:])
    line = error_line(p.stderr)
    for word in (str(out), "being written by another extraction", socket.gethostname(), f"pid {holder.pid}",
                 "Ray job 05000000", "started 20"):
        assert word in line, (word, line)
    assert not (out / ".writer.lock").exists() and not (out / "manifest.json").exists()  # released; nothing written


def _fake_lock(out: Path, **fields) -> Path:
    rec = {"host": socket.gethostname(), "pid": os.getpid(), "ray_job_id": "01000000", "started": time.time() - 50,
           "refreshed": time.time(), "lease_s": 60.0, "token": "f" * 16, **fields}
    out.mkdir(parents=True, exist_ok=True)
    (out / ".writer.lock").write_text(json.dumps(rec))
    return out / ".writer.lock"


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path, caplog):
    from scalemm.store.lock import StoreLock, StoreLockedError, read_lock

    out = tmp_path / "feats"
    # a live writer on another host (its pid cannot be checked from here): refused, named
    _fake_lock(out, host="node-7", pid=4242)
    with pytest.raises(StoreLockedError, match=r"host node-7, pid 4242, Ray job 01000000, started 20"):
        StoreLock(out).acquire()
    # the same writer once its lease ran out (killed, or its node died): taken over
    _fake_lock(out, host="node-7", pid=4242, refreshed=time.time() - 61)
    caplog.set_level(logging.WARNING, logger="scalemm.store.lock")
    with StoreLock(out, ray_job_id="02000000") as lock:
        assert read_lock(lock.path)["token"] == lock.record["token"]
    assert "took over the writer lock" in caplog.text and "lease expired" in caplog.text and "node-7" in caplog.text
    assert not (out / ".writer.lock").exists()  # released on exit
    # a writer of this host whose process is gone, lease still running: taken over at once
    caplog.clear()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _fake_lock(out, pid=dead.pid)
    with StoreLock(out):
        pass
    assert f"its process {dead.pid} is not running" in caplog.text
    # an unreadable lock (a half record) is someone's being written, unless it is old
    (out / ".writer.lock").write_text('{"host": ')
    with pytest.raises(StoreLockedError):
        StoreLock(out).acquire()
    os.utime(out / ".writer.lock", (time.time() - 120, time.time() - 120))
    with StoreLock(out):
        pass


def test_the_lock_of_a_writer_killed_with_kill_9_is_taken_over(tmp_path, caplog):
    from scalemm.store.lock import StoreLock

    out = tmp_path / "feats"
    code = ("import sys, time; from scalemm.store.lock import StoreLock; StoreLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert (out / ".writer.lock").exists()  # a kill -9 leaves it behind
    caplog.set_level(logging.WARNING, logger="scalemm.store.lock")
    with StoreLock(out):
        pass
    assert f"pid {proc.pid}" in caplog.text and "took over" in caplog.text


def _race(folder: str, start, wins) -> None:
    from scalemm.store.lock import StoreLock, StoreLockedError

    start.wait(30)
    try:
        StoreLock(folder).acquire()  # kept until the process ends
        wins.put(os.getpid())
        time.sleep(3)
    except StoreLockedError:
        wins.put(0)


@pytest.mark.parametrize("stale", [False, True])
def test_racing_writers_exactly_one_wins(tmp_path, stale):
    out = tmp_path / "feats"
    if stale:  # they all find the lock of a dead writer and try to take it over
        _fake_lock(out, host="node-7", refreshed=time.time() - 600)
    ctx = multiprocessing.get_context("fork")
    start, wins = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(out), start, wins)) for _ in range(6)]
    for p in procs:
        p.start()
    start.set()
    got = [wins.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(1 for g in got if g) == 1, got


def test_a_writer_whose_lock_was_taken_stops(tmp_path):
    from scalemm.store.lock import StoreLock, StoreLockedError

    out = tmp_path / "feats"
    lock = StoreLock(out, lease_s=60).acquire()
    try:
        _fake_lock(out, host="node-9", pid=99)  # what a taker writes once this writer's lease ran out
        lock.refresh()
        with pytest.raises(StoreLockedError, match="taken over by host node-9, pid 99"):
            lock.check()
    finally:
        lock.release()
    assert json.loads((out / ".writer.lock").read_text())["host"] == "node-9"  # not removed: it is not ours


# ----------------------------------------------------------------------------- the placement group

def test_a_job_reserves_its_decode_cpus_with_its_actors():
    from scalemm.errors import ClusterError
    from scalemm.extract.config import ExtractConfig
    from scalemm.extract.job import node_pool_plan, pool_bundles

    cfg = ExtractConfig()
    # one 2-CPU node: 2 actors of 0.5 CPU and 1 CPU to decode, all in one bundle (what a lone job used)
    assert pool_bundles(node_pool_plan([2.0], [0.0], cfg)) == [{"CPU": 2.0}]
    # the two-node cluster (1 CPU each): one bundle per node, its actor and its decoding
    assert pool_bundles(node_pool_plan([1.0, 1.0], [0.0, 0.0], cfg)) == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert pool_bundles(node_pool_plan([16.0], [0.0], cfg)) == [{"CPU": 16.0}]
    # 2 GPU actors and the 6 CPUs they leave, which decode in parallel (what a lone job had)
    assert pool_bundles(node_pool_plan([8.0], [2.0], cfg)) == [{"CPU": 8.0, "GPU": 2.0}]
    # nodes of different sizes: 7 actors on each, and each node's spare CPUs to decode
    assert pool_bundles(node_pool_plan([8.0, 16.0], [0.0, 0.0], cfg)) == [{"CPU": 16.0}, {"CPU": 8.0}]
    # a pool asked to be small: one actor and its decode CPUs on the largest node
    assert pool_bundles(node_pool_plan([8.0, 16.0], [0.0, 0.0], ExtractConfig(num_actors=1))) == [{"CPU": 16.0}]
    with pytest.raises(ClusterError, match="lower num_actors"):
        pool_bundles(node_pool_plan([2.0], [0.0], ExtractConfig(num_actors=4)))


@pytest.fixture(scope="module")
def ray_local(extracted):  # after the session's reference extraction, which runs its own Ray
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_a_job_waits_for_cpus_other_jobs_hold_says_so_and_gives_up(ray_local, run_cli, demo_corpus, tmp_path,
                                                                   caplog):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    other = placement_group([{"CPU": 2.0}])  # another job holds the cluster's 2 CPUs
    ray.get(other.ready())
    caplog.set_level(logging.INFO, logger="scalemm.extract.job")
    try:
        rc, out, err, secs = run_cli("extract.py", "--corpus", str(demo_corpus / "corpus.jsonl"), "--media-root",
                                     str(demo_corpus), "--out", str(tmp_path / "feats"), "--config", TINY,
                                     "--wait-timeout", "4")
    finally:
        remove_placement_group(other)
    assert rc == 2 and secs < 30, err
    line = error_line(err)
    assert "waited 4 s for 2 CPUs" in line and "0 of 2 CPUs free" in line and "--wait-timeout" in line, line
    assert "waiting for 2 CPUs" in caplog.text and "held by other jobs" in caplog.text
    assert not (tmp_path / "feats" / ".writer.lock").exists()


# ----------------------------------------------------------------------------- real clusters

@pytest.mark.slow
def test_two_jobs_submitted_together_to_a_2_cpu_cluster_both_finish(extracted, demo_corpus, tmp_path):
    """Two `ray job submit` of pipelines/extract.py into two stores at once, on one 2-CPU head
    (they deadlocked before: each held CPUs with its actors while its decode tasks waited); a
    third into the first one's store meanwhile refuses at once, naming it."""
    from cli_output import last_json
    from raycluster import RayHead

    ref, _ = extracted
    outs = [tmp_path / "a", tmp_path / "b"]
    with RayHead(num_cpus=2) as head:
        t0 = time.time()
        jobs = [head.start("pipelines/extract.py", "--corpus", str(demo_corpus / "corpus.jsonl"), "--media-root",
                           str(demo_corpus), "--out", str(o), "--config", "configs/tiny.yaml", log=tmp_path / f"{o.name}.log")
                for o in outs]
        try:
            deadline = time.time() + 300
            while not any((o / ".writer.lock").exists() for o in outs):
                assert time.time() < deadline and all(j.poll() is None for j in jobs), (
                    "no job took its store\n" + "\n".join((tmp_path / f"{o.name}.log").read_text()[-1500:] for o in outs)
                    + "\n" + head.log_tails())
                time.sleep(0.2)
            busy = next(o for o in outs if (o / ".writer.lock").exists())
            t1 = time.time()
            third = subprocess.run([sys.executable, str(ROOT / "pipelines" / "extract.py"), "--corpus",
                                    str(demo_corpus / "corpus.jsonl"), "--out", str(busy), "--config", TINY],
                                   capture_output=True, text=True, timeout=60, env=head.env(), cwd=tmp_path)
            refused_in = time.time() - t1
            rcs = [j.wait(timeout=400) for j in jobs]
        finally:
            for j in jobs:
                if j.poll() is None:
                    j.kill()
        both = time.time() - t0
    logs = [(tmp_path / f"{o.name}.log").read_text() for o in outs]
    assert rcs == [0, 0], [x[-3000:] for x in logs]
    for o, text in zip(outs, logs):
        assert last_json(text)["items"] == 32
        same_store(o, ref)
    # one waited for the other's CPUs, said so, and started once they were free
    assert any("waiting for 2 CPUs" in x and "starting after" in x for x in logs), "neither job said it waited"
    assert third.returncode == 2 and refused_in < 10, (refused_in, third.stderr[-2000:])
    line = error_line(third.stderr)
    assert "being written by another extraction" in line and "submission raysubmit_" in line, line
    print(f"two jobs on 2 CPUs: both finished in {both:.0f} s; the third refused in {refused_in:.1f} s")


@pytest.mark.slow
def test_three_jobs_on_the_two_node_cluster_all_finish(extracted, demo_corpus, tmp_path):
    from scalemm.bench.cluster import LocalCluster

    ref, _ = extracted
    outs = [tmp_path / n for n in ("a", "b", "c")]
    with LocalCluster(head_cpus=1, worker_cpus=[1]) as cluster:
        t0 = time.time()
        procs = []
        for o in outs:
            log = open(tmp_path / f"{o.name}.log", "w")
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "pipelines" / "extract.py"), "--corpus", str(demo_corpus / "corpus.jsonl"),
                 "--media-root", str(demo_corpus), "--out", str(o), "--config", TINY, "--address", cluster.address],
                env=cluster.env(), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        try:
            rcs = [p.wait(timeout=500) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(30)
        took = time.time() - t0
    logs = [(tmp_path / f"{o.name}.log").read_text() for o in outs]
    assert rcs == [0, 0, 0], [x[-3000:] for x in logs]
    for o in outs:
        same_store(o, ref)
    assert sum("waiting for 2 CPUs" in x for x in logs) >= 1
    print(f"three jobs on two 1-CPU nodes: all finished in {took:.0f} s")
