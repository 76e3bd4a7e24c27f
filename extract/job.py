"""The extraction job's driver: it plans, schedules and records commits; workers do the rest.

    scan     Ray tasks read the corpus by byte range and return per product its id, content
             fingerprint and byte range (:mod:`scalemm.extract.scan`)
    plan     against the store's live index: new and changed products go into new shards,
             unchanged ones stay where they are (:mod:`scalemm.extract.plan`)
    extract  per shard, decode tasks (a few products each) feed one model actor, which
             encodes the whole shard and writes it itself (:mod:`scalemm.extract.actor`)
    commit   the new generation's live index, then the manifest, each written atomically

What reaches the driver is columns (about 80 bytes a product) and one small record per shard
written; never product records, decoded media or features. A shard counts as done when its
failure part (written last, by the actor) exists and its files read back; a killed job loses
only the shards in flight, and its rerun makes the same plan and skips what is done.

One job at a time per store, held by the store's writer lock (:mod:`scalemm.store.lock`); the
stale temporary files a rerun removes are those of dead processes (by pid, on this machine). A
job that fails waits for the model actors it kills and removes what they were writing.
Several jobs on one cluster: each reserves its model actors' and its decode tasks' CPUs together
in one placement group, so a job runs with all it needs or waits as a whole, saying so
(:func:`reserve_pool`); without progress for ``--wait-timeout`` s it ends with one error.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scalemm import store
from scalemm.atomic import remove_stale_temps, temp_files
from scalemm.errors import (ClusterBusyError, ClusterError, ConfigError, MachineError, UserError, machine_message,
                            machine_os_error)
from scalemm.extract.config import ExtractConfig
from scalemm.extract.plan import Plan, ShardTask, make_plan
from scalemm.extract.scan import M5_DIR, ScanResult, check_corpus, scan_corpus
from scalemm.extract.version import feature_code_version
from scalemm.ray_address import resolve_ray_address
from scalemm.store.live import LIVE_DIR
from scalemm.store.lock import StoreLock

log = logging.getLogger(__name__)

# manifest fields a store and a job must agree on (a grown corpus is fine, see plan.py)
MANIFEST_FIELDS = ("schema_version", "code_version", "config", "backbones")
AHEAD = 2  # shards handed to each model actor at a time: the next one decodes while it encodes
KILL_WAIT_S = 30.0  # how long a failed job waits for its killed actors' writes to end (clean_after_kill)


@dataclass
class JobStats:
    items: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    failures: int = 0
    seconds: float = 0.0
    bytes_written: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        x = self.extra
        return {"items": self.items, "shards_written": self.shards_written, "shards_skipped": self.shards_skipped,
                "failures": self.failures, "seconds": round(self.seconds, 2),
                "items_per_s": round(x.get("items_processed", 0) / self.seconds, 2) if self.seconds else 0.0,
                "mb_written": round(self.bytes_written / 1e6, 2),
                **{k: x[k] for k in ("items_processed", "new", "changed", "removed", "kept", "generation",
                                     "driver_cpu_s", "driver_peak_rss_mb") if k in x},
                "nodes": len(x.get("nodes", {}))}


def check_out(out: Path) -> None:
    """Refuse at once an ``out`` that cannot become a directory (something on its path is a
    file), without creating anything."""
    p = out
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise store.StoreError(f"output directory {out} cannot be written ({p} is not a directory); "
                               f"choose another --out")


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise store.StoreError(f"output directory {out} cannot be written ({e.strerror or e}); "
                               f"choose another --out") from e


def _store_dirs(out: Path) -> list[Path]:
    return [out, out / store.FAILURE_PARTS, out / LIVE_DIR, out / M5_DIR, *(out / m for m in store.MODALITIES)]


def clean_store_temps(out: Path, wait: float = 0.0) -> list[Path]:
    """Delete the temporary files (``<name>.tmp<pid>``) that a killed run left in the store's
    folders (:func:`scalemm.atomic.remove_stale_temps`); files of a process that is still alive
    (after ``wait`` s) are kept. They never count as shards (see store.list_shards)."""
    removed = remove_stale_temps(_store_dirs(out), wait)
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run under %s", len(removed), out)
    return removed


def clean_after_kill(out: Path, wait: float = KILL_WAIT_S) -> list[Path]:
    """After a failed job killed its model actors: a killed actor may have been writing the next
    shard (they are handed :data:`AHEAD` at a time), so wait, at most ``wait`` s, for the writers'
    processes to end and delete their temporary files. Returns those still there (a writer still
    alive after ``wait`` s; the rerun removes them)."""
    clean_store_temps(out, wait)
    left = [p for p, _ in temp_files(_store_dirs(out))]
    if left:
        log.warning("%d temporary file(s) of a killed writer are left under %s; the rerun removes them", len(left),
                    out)
    return left


def check_manifest(out: Path, old: dict[str, Any] | None, manifest: dict[str, Any],
                   keys: list[str] | tuple[str, ...] = MANIFEST_FIELDS) -> None:
    """Refuse a store extracted with other backbones, preprocessing or feature code."""
    if old is None:
        return
    for key in keys:
        if old.get(key) != manifest.get(key):
            raise store.StoreError(
                f"{out} holds features from another run: manifest field '{key}' differs "
                f"({json.dumps(old.get(key))[:120]} vs {json.dumps(manifest.get(key))[:120]}). "
                f"Use a fresh --out, or delete {out} to re-extract.")


def provenances(infos: dict[str, dict[str, Any]], fingerprint: str, code: str) -> dict[str, store.Provenance]:
    return {m: store.Provenance(modality=m, backbone=i["spec"], weights_hash=i["weights_hash"],
                                pretrained=bool(i["pretrained"]), preprocessing=i["preprocessing"],
                                code_version=code, corpus_fingerprint=fingerprint, dim=int(i["dim"]),
                                pooled_dim=int(i["pooled_dim"]), max_tokens=int(i["max_tokens"]))
            for m, i in infos.items()}


def intact(out: Path, shards: set[int]) -> set[int]:
    """The ``shards`` that are committed and whose modality files all exist and open; a damaged
    one (truncated, half-written) is named in a warning and extracted again."""
    committed = store.committed_shards(out)
    ok = set()
    for k in sorted(shards & committed):
        try:
            for m in store.MODALITIES:
                path = store.shard_path(out, m, k)
                if not path.exists():
                    raise store.StoreError(f"shard {path} is missing")
                store.read_provenance(path)
        except store.StoreError as e:
            log.warning("%s; extracting shard %d again", str(e).split(". ")[0], k)
            continue
        ok.add(k)
    return ok


def already_written(out: Path, task: ShardTask, ok: set[int]) -> bool:
    """Whether an earlier run of this plan committed ``task``'s shard with exactly its products."""
    if task.shard not in ok:
        return False
    try:
        data, _ = store.read_shard_index(store.shard_path(out, store.MODALITIES[0], task.shard))
    except store.StoreError:
        return False
    return data.ids == task.ids and data.fingerprints == task.fingerprints


# ----------------------------------------------------------------------------- the actor pool

def cluster_plan(cfg: ExtractConfig) -> dict[str, Any]:
    """Actor pool size, CPUs and GPUs per actor from the cluster's nodes (see :func:`pool_plan`)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        res = ray.cluster_resources()
        nodes = [{"CPU": float(res.get("CPU", 1)), "GPU": float(res.get("GPU", 0))}]
    return node_pool_plan([float(n.get("CPU", 0)) for n in nodes], [float(n.get("GPU", 0)) for n in nodes], cfg)


def node_pool_plan(node_cpus: list[float], node_gpus: list[float], cfg: ExtractConfig) -> dict[str, Any]:
    """The pool for a cluster of nodes: one node's :func:`pool_plan` (the smallest node's, when
    they differ) on every node, the actors spread over the nodes, and the decode tasks sized to
    what a node has left (a whole CPU, or what a 1-CPU node's actor leaves of it)."""
    small = min(range(len(node_cpus)), key=lambda i: (node_cpus[i], node_gpus[i]))
    if len(node_cpus) == 1:
        p = pool_plan(node_cpus[0], node_gpus[0], cfg)
    else:
        p = pool_plan(node_cpus[small], node_gpus[small], cfg)
        if not cfg.num_actors:
            p["actors"] *= len(node_cpus)
        p["cluster_cpus"] = sum(node_cpus)
    per_node = -(-p["actors"] // len(node_cpus))
    left = node_cpus[small] - per_node * p["cpus"]
    return {**p, "nodes": len(node_cpus), "per_node": per_node, "node_cpus": node_cpus[small],
            "all_node_cpus": sorted(node_cpus, reverse=True), "decode_cpus": round(min(1.0, max(left, 0.25)), 3)}


def pool_plan(cpus: float, gpus: float, cfg: ExtractConfig) -> dict[str, Any]:
    """Actor pool size, CPUs, GPUs and torch threads per actor for a cluster with ``cpus`` / ``gpus``.

    One CPU is always left to the decode tasks: an actor pool that takes every CPU starves
    them and the stream never moves. On a small node where that leaves one actor (2 CPUs),
    the pool is one single-threaded actor per core, each on a share of the CPUs left over,
    rather than one actor with a thread per core: a multi-threaded forward stalls at every
    parallel region while a decode task or Ray itself holds one of the cores (measured on
    2 cores: 7.0 items/s for one 2-thread actor, 9.7 for two 1-thread ones, the bare
    2-thread model 10). It costs one more copy of the backbones in memory. ``num_actors`` set
    in the config is kept as it is."""
    use_gpu = gpus >= 1 and cfg.use_gpu != "no"
    if cfg.use_gpu == "yes" and not use_gpu:
        raise RuntimeError("use_gpu: yes, but the Ray cluster has no GPU")
    if use_gpu:
        n = cfg.num_actors or int(gpus)
        actor_cpus = min(cfg.actor_cpus, max(1.0, (cpus - 1) / max(n, 1)))
        return {"actors": n, "cpus": actor_cpus, "gpus": 1.0, "threads": int(actor_cpus), "cluster_cpus": cpus}
    actor_cpus = min(cfg.actor_cpus, max(cpus - 1, 0.5))
    n = cfg.num_actors or max(1, int((cpus - 1) // actor_cpus))
    if n == 1 and not cfg.num_actors and 2 <= cpus < 3:
        n = int(cpus)
        return {"actors": n, "cpus": (cpus - 1) / n, "gpus": 0.0, "threads": 1, "cluster_cpus": cpus}
    # an actor the config asked to be alone may use the decode CPU too
    threads = max(1, int(cpus // n)) if n == 1 else max(1, int(actor_cpus))
    return {"actors": n, "cpus": actor_cpus, "gpus": 0.0, "threads": threads, "cluster_cpus": cpus}


def pool_bundles(cp: dict[str, Any]) -> list[dict[str, float]]:
    """The job's placement group: one bundle per node holding that node's model actors AND the
    CPUs its decode (and scan) tasks run on, so a job reserves everything it needs at once or
    waits as a whole (two jobs that each held their actors' CPUs while their decode tasks waited
    for the other's deadlocked). The bundle is what a lone job used of the node before: on one
    2-CPU node, 2 actors of 0.5 CPU and 1 CPU to decode; on a GPU node, its GPU actors and every
    CPU they leave to decode (decoding is what a GPU waits for). On nodes of different sizes each
    bundle is its node's CPUs (the decode tasks used a big node's spare CPUs before too)."""
    nodes = min(cp.get("nodes", 1), cp["actors"])
    per_node = -(-cp["actors"] // nodes)
    actors = per_node * cp["cpus"]
    need = round(actors + cp["decode_cpus"], 3)
    if "node_cpus" in cp and need > cp["node_cpus"] + 1e-9:
        raise ClusterError(f"the actor pool needs {need:g} CPUs on a node ({per_node} model actor(s) of "
                           f"{cp['cpus']:g} CPU and {cp['decode_cpus']:g} to decode) and the cluster's nodes have "
                           f"{cp['node_cpus']:g}; lower num_actors or actor_cpus in the extraction config")
    sizes = cp.get("all_node_cpus") or [cp.get("node_cpus", 0)] * nodes
    gpus = {"GPU": per_node * cp["gpus"]} if cp["gpus"] else {}
    return [{"CPU": round(max(need, c), 3), **gpus} for c in sizes[:nodes]]


def reserve_pool(cp: dict[str, Any], timeout: float | None) -> Any:
    """The job's placement group (:func:`pool_bundles`), once Ray has placed it. While other
    jobs hold the CPUs it says so, and what it waits for; after ``timeout`` s (None: for ever)
    :class:`ClusterBusyError`. The group goes when the job's driver ends (or is killed)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = pool_bundles(cp)
    pg = placement_group(bundles, strategy="PACK" if len(bundles) == 1 else "SPREAD")
    need = sum(b["CPU"] for b in bundles)
    t0, said, placed = time.time(), 0.0, pg.ready()
    while True:
        step = 2.0 if not said else 30.0
        if timeout is not None:
            step = max(0.1, min(step, t0 + timeout - time.time()))
        ready, _ = ray.wait([placed], timeout=step)
        if ready:
            if said:
                log.info("the cluster's CPUs are free: starting after %.0f s of waiting", time.time() - t0)
            return pg
        waited = time.time() - t0
        free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
        what = (f"{need:g} CPUs ({cp['actors']} model actor(s) of {cp['cpus']:g} CPU and {cp['decode_cpus']:g} "
                f"per node to decode, {len(bundles)} node(s))")
        if timeout is not None and waited >= timeout:
            remove_placement_group(pg)
            raise ClusterBusyError(
                f"waited {waited:.0f} s for {what}; the cluster has {free:g} of {total:g} CPUs free, the rest "
                f"held by other jobs (see `ray status`, `ray job list`); rerun when they are done, or raise "
                f"--wait-timeout (0 waits for ever)")
        (log.warning if not said else log.info)(
            "waiting for %s held by other jobs: the cluster has %g of %g CPUs free; waited %.0f s%s", what, free,
            total, waited, f", giving up after {timeout:.0f} s" if timeout is not None else "")
        said = waited


def start_actors(cfg: ExtractConfig, cp: dict[str, Any], out: Path, pg: Any = None) -> list[Any]:
    """The model actors, dealt round the bundles of the job's placement group ``pg`` (one per
    node); without one, round the nodes (a soft node affinity). They start loading the
    backbones at once."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    from scalemm.extract.actor import ShardEncoder

    cls = ray.remote(ShardEncoder)
    if pg is not None:
        n = len(pg.bundle_specs)
        where = [PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i % n)
                 for i in range(cp["actors"])]
    else:
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0)
        where = [NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True) if nodes else None
                 for i in range(cp["actors"])]
    return [cls.options(num_cpus=cp["cpus"], num_gpus=cp["gpus"] or None, max_restarts=0,
                        scheduling_strategy=w).remote(cfg.to_dict(), cp["threads"], str(out))
            for w in where]


def in_pool(pg: Any) -> dict[str, Any]:
    """Ray options that run a task on any bundle of the job's placement group (none: anywhere)."""
    if pg is None:
        return {}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=-1)}


def actor_infos(actors: list[Any], timeout: float = 900) -> dict[str, dict[str, Any]]:
    """The backbones' provenance from the first model actor to load them."""
    import ray

    try:
        return ray.get(actors[0].infos.remote(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(f"no model actor started in {timeout:.0f} s; does a node have the CPUs (or GPU) an "
                           f"actor asks for free? (see `ray status`)") from None
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserError):  # e.g. a weights file that is not there
            raise e.cause from None
        raise


# ----------------------------------------------------------------------------- scheduling

class ShardRunner:
    """Hands the plan's shards to the model actors, :data:`AHEAD` at a time each, with their
    decode tasks; records each commit. A lost actor's shards go to the others (a node that
    died); a shard whose decode or encode raised fails the job (the rerun resumes)."""

    def __init__(self, actors: list[Any], scan: ScanResult, media_root: Path, cfg: ExtractConfig,
                 decode_cpus: float, pg: Any = None, stall_timeout: float | None = None,
                 lock: StoreLock | None = None) -> None:
        import ray

        from scalemm.extract.decoding import decode_lines

        self.actors = dict(enumerate(actors))
        self.load = {i: 0 for i in self.actors}
        self.decode = ray.remote(decode_lines).options(num_cpus=decode_cpus, max_retries=3, **in_pool(pg))
        self.stall_timeout, self.lock = stall_timeout, lock
        self.args = (str(scan.corpus), str(media_root.resolve()), cfg.to_dict())
        self.chunk = cfg.decode_batch_size
        self.decoded: dict[int, list[Any]] = {}  # shard -> its decode tasks' refs, submitted ahead
        self.provs: dict[str, dict[str, Any]] = {}
        self.commits: list[dict[str, Any]] = []

    def prefetch(self, tasks: list[ShardTask]) -> None:
        """Submit the decode tasks of ``tasks`` now (their actors are still loading)."""
        corpus, media, cfg = self.args
        for t in tasks:
            self.decoded[t.shard] = [self.decode.remote(corpus, t.spans[j:j + self.chunk], media, cfg)
                                     for j in range(0, len(t), self.chunk)]

    def _submit(self, i: int, t: ShardTask) -> Any:
        if t.shard not in self.decoded:
            self.prefetch([t])
        chunks = self.decoded.pop(t.shard)
        return self.actors[i].write.remote(t.shard, t.ids, t.fingerprints, self.provs, *chunks)

    def run(self, tasks: list[ShardTask], provs: dict[str, store.Provenance]) -> list[dict[str, Any]]:
        import ray

        self.provs = {m: p.to_json() for m, p in provs.items()}
        queue: deque[ShardTask] = deque(tasks)
        running: dict[Any, tuple[int, ShardTask]] = {}
        with tqdm(total=sum(len(t) for t in tasks), desc="extract", unit="item", mininterval=2.0) as bar:
            while queue or running:
                while queue and (free := [i for i in self.actors if self.load[i] < AHEAD]):
                    i = min(free, key=lambda a: self.load[a])  # one at a time to the least loaded
                    t = queue.popleft()
                    running[self._submit(i, t)] = (i, t)
                    self.load[i] += 1
                done, _ = ray.wait(list(running), num_returns=1, timeout=self.stall_timeout)
                if not done:
                    raise ClusterBusyError(
                        f"no shard was committed for {self.stall_timeout:.0f} s ({len(running)} in flight on "
                        f"{len(self.actors)} model actor(s); see `ray status`); the shards committed so far are "
                        f"kept: rerun to resume, or raise --wait-timeout (0 waits for ever)")
                (ref,) = done
                i, t = running.pop(ref)
                self.load[i] -= 1
                try:
                    rec = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    self._lost(i, e)
                    queue.appendleft(t)
                    continue
                except ray.exceptions.RayTaskError as e:
                    if isinstance(e.cause, UserError):
                        raise e.cause from None
                    raise
                self.commits.append(rec)
                if self.lock is not None:
                    self.lock.check()
                bar.update(rec["items"])
                bar.set_postfix(shards=len(self.commits))
        return self.commits

    def _lost(self, i: int, e: Exception) -> None:
        if i in self.actors:
            del self.actors[i]
            log.warning("model actor %d was lost (%s); %d left take its shards", i, type(e).__name__,
                        len(self.actors))
        if not self.actors:
            raise RuntimeError("every model actor was lost (their nodes died?); rerun the job to finish: "
                               "the shards committed so far are kept") from e


# ----------------------------------------------------------------------------- the job

def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def commit_generation(out: Path, plan: Plan, manifest: dict[str, Any], old: dict[str, Any] | None) -> int:
    """Write the plan's live index as the next generation, then the manifest naming it."""
    generation = int((old or {}).get("generation", 0)) + 1
    path = store.write_live_index(out, generation, plan.index)
    shards = len(plan.kept_shards | {t.shard for t in plan.tasks})
    store.write_manifest(out, {**manifest, "generation": generation,
                               store.LIVE_KEY: str(path.relative_to(out)), "next_shard": plan.next_shard,
                               "n_items": plan.index.num_rows, "n_shards": shards, "last_job": plan.counts})
    return generation


def plan_job(out: Path, scan: ScanResult, cfg: ExtractConfig, old: dict[str, Any] | None) -> tuple[Plan, list[ShardTask]]:
    """The plan against the store's live index, and its shards not written yet."""
    index = store.read_live_index(out, old)
    ok = intact(out, set() if index is None else set(index.rows_by_shard()))
    plan = make_plan(scan, index, ok, cfg.shard_size, int((old or {}).get("next_shard", 0)))
    for b in plan.bad[:20]:
        log.warning("bad corpus record at %s: %s", b.where, b.error)
    if len(plan.bad) > 20:
        log.warning("... %d more bad corpus records (all in %s)", len(plan.bad) - 20, out / store.FAILURES)
    done = intact(out, {t.shard for t in plan.tasks})
    todo = [t for t in plan.tasks if not already_written(out, t, done)]
    log.info("%d products: %s; %d shards to write, %d kept", plan.index.num_rows, plan.counts, len(todo),
             len(plan.kept_shards) + len(plan.tasks) - len(todo))
    return plan, todo


def finish_job(out: Path, plan: Plan, todo: list[ShardTask], commits: list[dict[str, Any]],
               manifest: dict[str, Any], old: dict[str, Any] | None) -> JobStats:
    """Commit the new generation (when the live rows changed), merge the failures, count."""
    generation = int((old or {}).get("generation", 0))
    if plan.changes or (old or {}).get(store.LIVE_KEY) is None:
        generation = commit_generation(out, plan, manifest, old)
    stats = JobStats(items=plan.index.num_rows, shards_written=len(commits),
                     shards_skipped=len(plan.kept_shards) + len(plan.tasks) - len(todo))
    stats.bytes_written = sum(c["bytes"] for c in commits)
    stats.failures = store.merge_failures(out, [b.as_failure() for b in plan.bad])
    nodes: dict[str, int] = {}
    for c in commits:
        nodes[c["node"]] = nodes.get(c["node"], 0) + 1
    stats.extra.update(items_processed=sum(c["items"] for c in commits), generation=generation, nodes=nodes,
                       **plan.counts)
    return stats


WAIT_TIMEOUT_S = 600.0  # default of --wait-timeout (SCALE_WAIT_TIMEOUT)


def wait_timeout_s(value: float | None = None) -> float | None:
    """How long a job waits without progress (the cluster's CPUs, the next shard) before it
    gives up: ``value``, else $SCALE_WAIT_TIMEOUT, else :data:`WAIT_TIMEOUT_S`; 0 or less: for
    ever (None)."""
    if value is None:
        raw = os.environ.get("SCALE_WAIT_TIMEOUT", "")
        try:
            value = float(raw) if raw.strip() else WAIT_TIMEOUT_S
        except ValueError:
            raise ConfigError(f"SCALE_WAIT_TIMEOUT must be a number of seconds, not {raw!r}") from None
    return None if value <= 0 else float(value)


def run_extraction(corpus_path: str | Path, media_root: str | Path, out: str | Path, cfg: ExtractConfig,
                   address: str | None = None, fmt: str = "auto", wait_timeout: float | None = None) -> JobStats:
    """Extract ``corpus_path`` into the store ``out`` (new, or grown by an earlier corpus).

    The job is the store's one writer (:class:`scalemm.store.lock.StoreLock`, taken before Ray
    starts: a second job refuses at once). It reserves its actors' and decode tasks' CPUs in one
    placement group (:func:`reserve_pool`), waiting while other jobs hold them; it gives up with
    one error after ``wait_timeout`` s (:func:`wait_timeout_s`) without progress. An error of the
    machine (a full disk...) ends it with a :class:`MachineError` saying the store is intact."""
    out, media_root = Path(out), Path(media_root)
    if not media_root.is_dir():
        raise store.StoreError(f"media root {media_root} is not a directory")
    check_out(out)
    fmt = check_corpus(corpus_path, fmt)
    check_writable(out)
    timeout = wait_timeout_s(wait_timeout)
    try:
        with StoreLock(out) as lock:
            return _run(corpus_path, media_root, out, cfg, address, fmt, timeout, lock)
    except UserError:
        raise
    except Exception as e:
        err = machine_os_error(e)
        if err is None:
            raise
        raise MachineError(machine_message(
            err, f"the store {out} is intact (committed shards are kept; the shard in flight is not committed)",
            "rerun: the rerun resumes")) from e


def _run(corpus_path: str | Path, media_root: Path, out: Path, cfg: ExtractConfig, address: str | None, fmt: str,
         timeout: float | None, lock: StoreLock) -> JobStats:
    import ray

    t0, cpu0 = time.time(), time.process_time()
    started = not ray.is_initialized()
    if started:
        address = resolve_ray_address(address)
        ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING,
                 log_to_driver=True, include_dashboard=False if address in (None, "local") else None)
    actors: list[Any] = []
    pg = None
    try:
        lock.update(ray_job_id=ray.get_runtime_context().get_job_id())
        cp = cluster_plan(cfg)
        log.info("actor pool: %s", cp)
        pg = reserve_pool(cp, timeout)
        actors = start_actors(cfg, cp, out, pg)  # they load the backbones while the corpus is scanned
        scan = scan_corpus(corpus_path, media_root, fmt, out, cp["decode_cpus"], options=in_pool(pg))
        log.info("scanned %d products in %.1f s", scan.products.num_rows, time.time() - t0)
        code = feature_code_version()
        old = store.read_manifest(out)
        manifest = {**(old or {}), "schema_version": store.SCHEMA_VERSION, "code_version": code,
                    "config": cfg.feature_fields(), "corpus": str(Path(corpus_path).resolve()),
                    "media_root": str(media_root.resolve()), "corpus_fingerprint": scan.corpus_fingerprint}
        check_manifest(out, old, manifest, [k for k in MANIFEST_FIELDS if k != "backbones"])
        clean_store_temps(out)
        plan, todo = plan_job(out, scan, cfg, old)
        runner = ShardRunner(actors, scan, media_root, cfg, cp["decode_cpus"], pg, timeout, lock)
        runner.prefetch(todo[:AHEAD * len(actors)])  # decoding starts while the backbones load
        manifest["backbones"] = actor_infos(actors)
        log.info("model actor ready after %.1f s", time.time() - t0)
        check_manifest(out, old, manifest, ["backbones"])
        lock.check()
        if old is None:  # record what the store holds before the first shard appears
            store.write_manifest(out, manifest)
        for t in todo:  # un-commit before rewriting: a kill half-way must not leave a mixed shard committed
            store.failure_part_path(out, t.shard).unlink(missing_ok=True)
        commits = runner.run(todo, provenances(manifest["backbones"], scan.corpus_fingerprint, code)) if todo else []
        log.info("%d shards written after %.1f s", len(commits), time.time() - t0)
        for a in actors:
            ray.kill(a)
        actors = []
        lock.check()
        stats = finish_job(out, plan, todo, commits, manifest, old)
    finally:
        for a in actors:
            ray.kill(a)
        if actors and lock.lost is None:  # failed with actors at work (and still the store's writer):
            clean_after_kill(out)  # none may leave a half-written shard behind
        if pg is not None and ray.is_initialized():
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(pg)
            except Exception as e:  # noqa: BLE001 - the group goes with the job anyway
                log.debug("could not remove the placement group: %s", e)
        if started:
            ray.shutdown()
    stats.seconds = time.time() - t0
    stats.extra.update(driver_cpu_s=round(time.process_time() - cpu0, 2), driver_peak_rss_mb=_peak_rss_mb())
    return stats
