"""Data-parallel training under Ray Train: the same :func:`fuse.train.train` on N workers.

``train_distributed`` starts a Ray Train ``TorchTrainer`` with
``ScalingConfig(num_workers=N, use_gpu=...)``; every worker runs :func:`fuse.train.train`
with a :class:`fuse.train.DistContext` (its rank and the world size). Inside, the model
is wrapped in ``DistributedDataParallel`` (Ray Train has set up the process group: gloo on
CPU, NCCL on GPU), each rank takes every N-th batch of the epoch's order (same seed, same
order on all ranks), a NaN on any rank stops all of them, and only rank 0 writes the run
directory (checkpoints, logs, plot). Resuming works as in the single-process loop: every
rank reads the latest checkpoint from the run directory, which must be on a file system
all workers see (one machine, or a shared mount).

SIMCL and the subset-consistency loss contrast the samples of every worker, gathered with
their gradients (:mod:`fuse.gather`), so N workers x batch B train the objective of one
process with batch N x B: rank r's batches are the r-th of every N consecutive batches of
the epoch's order, which together are the combined batch of one process.

Used by ``pipelines/train.py --workers N``; without ``--workers`` training runs in one
process with no Ray at all. Tested with 2 CPU workers (gloo): their loss and gradients equal
one process's with the combined batch (tests/test_fuse_gather.py), and so do their trained
weights (tests/test_fuse_train.py).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from scalemm.runs import RunFolder

from .config import ScaleConfig

if TYPE_CHECKING:
    from .train import TrainResult

log = logging.getLogger(__name__)


def _worker_loop(conf: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from .train import DistContext, train

    ctx = ray.train.get_context()
    dist = DistContext(rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                       device=ray.train.torch.get_device())
    cfg = ScaleConfig.from_dict(conf["cfg"]) if conf["cfg"] is not None else None
    result = train(conf["features"], conf["run_dir"], cfg, resume=conf["resume"], epochs=conf["epochs"],
                   seed=conf["seed"], progress=conf["progress"], dist=dist)
    ray.train.report({"result": result.to_dict()})


def run_workers(loop: Callable[[dict[str, Any]], None], conf: dict[str, Any], storage: str | Path, *,
                workers: int = 1, use_gpu: bool = False, address: str | None = None, name: str = "scale-train") -> Any:
    """Run ``loop(conf)`` on ``workers`` Ray Train workers (the process group set up: gloo on CPU,
    NCCL on GPU); returns Ray Train's result after raising the error of a failed worker.

    ``address``: the Ray cluster to use; default ``$RAY_ADDRESS`` (set inside ``ray job
    submit``), else a private local instance (``"local"``), never some other cluster that
    happens to run on this machine. An already initialised Ray in this process is used as is.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = False
    if not ray.is_initialized():
        # with a dashboard: Ray Train's placement-group cleaner asks the State API (served by the
        # dashboard) every second whether the controller lives, and warned each time without one
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=True,
                 log_to_driver=True, configure_logging=False)
        started = True
    try:
        trainer = TorchTrainer(
            loop, train_loop_config=conf,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(name=name, storage_path=str(storage)),
        )
        res = trainer.fit()
    finally:
        if started:
            ray.shutdown()
    if res.error is not None:
        raise res.error
    return res


def train_distributed(features_dir: str | Path, run_dir: str | Path, cfg: ScaleConfig | None = None, *,
                      workers: int = 1, use_gpu: bool = False, resume: bool = False,
                      epochs: int | None = None, seed: int | None = None,
                      progress: bool = True, address: str | None = None) -> TrainResult:
    """Run :func:`fuse.train.train` on ``workers`` Ray Train workers; returns rank 0's result.
    ``address``: see :func:`run_workers`."""
    from .train import TrainResult

    run_dir = Path(run_dir).resolve()
    conf = {"features": str(Path(features_dir).resolve()), "run_dir": str(run_dir),
            "cfg": cfg.to_dict() if cfg is not None else None, "resume": resume, "epochs": epochs,
            "seed": seed, "progress": progress}
    res = run_workers(_worker_loop, conf, run_dir / "ray", workers=workers, use_gpu=use_gpu, address=address)
    if res.metrics and "result" in res.metrics:
        return TrainResult(**res.metrics["result"])
    # Ray Train v2 keeps only metrics reported with a checkpoint: rank 0 wrote the summary
    return TrainResult(**json.loads(RunFolder(run_dir).result.read_text()))
