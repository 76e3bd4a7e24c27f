"""Two Ray Train workers with batch B against one process with batch 2B: do they train the same
objective? (``tests/test_fuse_gather.py`` asserts it; ``pipelines/bench.py --scale`` reports it as
``gathered_negatives_equal``.)

:func:`two_worker_check` writes a small synthetic store (:mod:`corpora.scalestore`), takes its
first 2B products as one batch, and runs one real training step (:func:`fuse.step.train_step`,
the model wrapped in DDP) on 2 Ray Train workers (gloo on CPU), worker r on the r-th half, and
the same step in one process on the whole batch, from the same initial weights. It compares the
step's loss and every parameter's gradient (after DDP's all-reduce and the gradient clipping
both do) with the single process's. The config switches off what is random per rank or
per sample and differs between the two set-ups by design (dropout, and the masked losses,
which are per-sample means on each rank); SIMCL with harmonized W and the subset-consistency
loss are on. It does so with the negatives gathered across workers (``gather_negatives``, the
default) and without, which must differ: the check can fail.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = {"image": (4, 16), "text": (5, 16), "table": (6, 16), "audio": (3, 8)}


def _check_config(gather: bool):
    from scalemm.fuse.config import ScaleConfig

    return ScaleConfig(modalities=list(SHAPES), d_model=32, heads=4, encoder_layers=1, fusion_layers=1, dropout=0.0,
                       masked_losses=False, subset_weight=1.0, lr=1e-3, warmup_steps=0, seed=0,
                       runtime={"gather_negatives": gather, "threads": 1, "tensorboard": False})


def _step(features: str, rows: np.ndarray, gather: bool, world: int) -> dict[str, Any]:
    """One train_step on ``rows`` of the store; the loss and every parameter's gradient."""
    import torch

    from scalemm.fuse.reader import FeatureDataset
    from scalemm.fuse.step import build_learner, train_step

    torch.set_num_threads(1)
    cfg = _check_config(gather)
    ds = FeatureDataset(features, cfg.modalities)
    learner = build_learner(cfg, {m: (s.max_tokens, s.dim) for m, s in ds.shapes.items()}, torch.device("cpu"), world)
    rec = train_step(learner, ds.get_batch(rows), 0)
    grads = {n: p.grad.detach().clone() for n, p in learner.model.named_parameters() if p.grad is not None}
    return {"loss": rec["loss"], "grads": grads}


def _worker(conf: dict[str, Any]) -> None:
    """A Ray Train worker: its half of the batch, gathered and not; results into ``conf['out']``."""
    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rows = np.asarray(conf["rows"])
    b = len(rows) // world
    mine = rows[rank * b:(rank + 1) * b]
    res = {str(g): _step(conf["features"], mine, g, world) for g in (True, False)}
    torch.save(res, Path(conf["out"]) / f"rank-{rank}.pt")


def _compare(ref: dict[str, Any], got: dict[str, Any], rtol: float, atol: float) -> dict[str, Any]:
    import torch

    names = sorted(ref["grads"])
    same_params = names == sorted(got["grads"])
    diff = max((float((ref["grads"][n] - got["grads"][n]).abs().max()) for n in names if n in got["grads"]),
               default=float("inf"))
    scale = max(float(g.abs().max()) for g in ref["grads"].values())
    close = same_params and all(torch.allclose(got["grads"][n], ref["grads"][n], rtol=rtol, atol=atol * scale)
                                for n in names)
    loss_ok = abs(got["loss"] - ref["loss"]) <= atol + rtol * abs(ref["loss"])
    return {"loss_1_worker": ref["loss"], "loss_2_workers": got["loss"], "max_grad_abs_diff": diff,
            "max_grad_abs": scale, "same_parameters": same_params, "equal": bool(loss_ok and close)}


def two_worker_check(batch: int = 16, work: str | Path | None = None, rtol: float = 1e-4, atol: float = 1e-5,
                     address: str | None = None) -> dict[str, Any]:
    """2 Ray Train workers x batch ``batch`` against 1 process x ``2 * batch`` (see the module doc).

    Returns ``{"gathered": {...}, "local": {...}, "equal": bool, ...}``: per set-up the two losses,
    the largest gradient difference and whether everything agrees within ``rtol`` / ``atol``
    (``atol`` relative to the largest gradient); ``equal`` is the gathered set-up's verdict."""
    import torch

    from scalemm.corpora.scalestore import ScaleStoreSpec, write_scale_store
    from scalemm.fuse.distributed import run_workers

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gathercheck-", dir=work) as tmp:
        feats = Path(tmp) / "feats"
        write_scale_store(feats, ScaleStoreSpec(n_items=4 * batch, shard_size=3 * batch, n_categories=4,
                                                modalities=tuple(SHAPES), shapes=SHAPES, missing=0.2),
                          progress=False)
        # the batch straddles a shard boundary, as batches of a real epoch may
        rows = np.arange(batch, 3 * batch)
        conf = {"features": str(feats), "rows": rows.tolist(), "out": tmp}
        run_workers(_worker, conf, Path(tmp) / "ray", workers=2, address=address, name="gather-check")
        ranks = [torch.load(Path(tmp) / f"rank-{r}.pt", weights_only=True) for r in range(2)]
        out: dict[str, Any] = {"batch_per_worker": batch, "workers": 2, "backend": "gloo"}
        for gather in (True, False):
            ref = _step(str(feats), rows, gather, 1)
            cmp = _compare(ref, ranks[0][str(gather)], rtol, atol)
            # DDP leaves the same averaged gradients on every rank
            cmp["ranks_agree"] = all(torch.equal(ranks[0][str(gather)]["grads"][n], ranks[1][str(gather)]["grads"][n])
                                     for n in ranks[0][str(gather)]["grads"])
            out["gathered" if gather else "local"] = cmp
    out["equal"] = out["gathered"]["equal"] and out["gathered"]["ranks_agree"]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
