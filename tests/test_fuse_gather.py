"""Negatives gathered across data-parallel workers (fuse/gather.py): N workers x batch B must give
the loss and the gradients of one process with the combined batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from scalemm.fuse.gather import all_gather_rows, all_gather_with_grad, gather_output, world_size
from scalemm.fuse.losses import info_nce

torch.set_num_threads(1)
ROWS = (3, 5)  # rows per rank: unequal on purpose (the gather pads)


def _features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = sum(ROWS)
    return torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g), torch.rand(n, generator=g) < 0.7


def _loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (info_nce(F.normalize(a) @ F.normalize(b).T / 0.1) + info_nce(F.normalize(b) @ F.normalize(a).T / 0.1))


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        a, b, flag = _features()
        lo, hi = sum(ROWS[:rank]), sum(ROWS[:rank + 1])
        xa, xb = a[lo:hi].clone().requires_grad_(True), b[lo:hi].clone().requires_grad_(True)
        loss = _loss(all_gather_with_grad(xa), all_gather_with_grad(xb))
        loss.backward()
        torch.save({"loss": loss.detach(), "ga": xa.grad, "gb": xb.grad, "world": world_size(),
                    "flags": all_gather_rows(flag[lo:hi])}, Path(out) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_outside_a_process_group_nothing_is_gathered() -> None:
    a, _, flag = _features()
    assert world_size() == 1
    assert all_gather_with_grad(a) is a and all_gather_rows(flag) is flag
    sentinel = object()
    assert gather_output(sentinel) is sentinel  # type: ignore[arg-type]


def test_two_processes_of_unequal_batches_get_the_combined_loss_and_its_gradients(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    got = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    a, b, flag = _features()
    a.requires_grad_(True)
    b.requires_grad_(True)
    ref = _loss(a, b)
    ref.backward()
    for r, g in enumerate(got):
        lo, hi = sum(ROWS[:r]), sum(ROWS[:r + 1])
        assert g["world"] == 2 and torch.equal(g["flags"], flag)
        assert torch.allclose(g["loss"], ref.detach(), atol=1e-6)
        # each rank's rows get the gradient summed over both ranks' (identical) losses: 2x the
        # combined batch's; DDP's average over the ranks then makes the parameter gradient exact
        assert torch.allclose(g["ga"], 2 * a.grad[lo:hi], atol=1e-6)
        assert torch.allclose(g["gb"], 2 * b.grad[lo:hi], atol=1e-6)


@pytest.mark.slow
def test_two_ray_train_workers_give_the_loss_and_gradients_of_one_process_with_both_batches(tmp_path) -> None:
    pytest.importorskip("ray.train.torch")
    from scalemm.bench.gathercheck import two_worker_check

    r = two_worker_check(batch=16, work=tmp_path)
    g = r["gathered"]
    assert g["same_parameters"] and g["ranks_agree"]
    assert g["loss_2_workers"] == pytest.approx(g["loss_1_worker"], rel=1e-5)
    assert g["max_grad_abs_diff"] <= 1e-5 * g["max_grad_abs"], g
    assert r["equal"] is True
    # each worker contrasting only its own batch is another objective: the check can fail
    assert r["local"]["equal"] is False
    assert abs(r["local"]["loss_2_workers"] - r["local"]["loss_1_worker"]) > 1e-3
