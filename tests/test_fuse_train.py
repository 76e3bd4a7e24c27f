"""Training: learning planted structure, determinism, exact resume, NaN guard, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import scalemm.fuse.step as fuse_step
from scalemm.store import StoreError
from scalemm.fuse.checkpoint import CheckpointError, latest_checkpoint
from scalemm.fuse.embedder import Embedder
from scalemm.fuse.model import ScaleModel, product_embedding
from scalemm.fuse.reader import FeatureDataset
from scalemm.fuse.train import TrainingDiverged, train
from fuse_helpers import SMALL_SHAPES, tiny_config, write_synthetic_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("planted") / "feats"
    write_synthetic_store(root, n_items=96, nuisance=1.5, noise=0.5, missing=0.1, seed=0)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small") / "feats"
    write_synthetic_store(root, n_items=56, missing=0.15, seed=1)  # 3 steps per epoch
    return root


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory) -> tuple[Path, object]:
    """An uninterrupted 2-epoch run on ``small`` (the runs below must reproduce it)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    return run, train(small, run, tiny_config(epochs=2), progress=False)


def _retrieval(vecs, pooled, present, labels, instances) -> dict[str, float]:
    """P@1 of instance retrieval (product embedding) and of image->text class retrieval."""
    labels, instances = np.asarray(labels), np.asarray(instances)
    S = vecs @ vecs.T
    np.fill_diagonal(S, -np.inf)
    inst = float((instances[S.argmax(1)] == instances).mean())
    q = present[:, 0] & present[:, 1]
    a = pooled[q, 0] / np.linalg.norm(pooled[q, 0], axis=1, keepdims=True)
    b = pooled[q, 1] / np.linalg.norm(pooled[q, 1], axis=1, keepdims=True)
    C = a @ b.T
    np.fill_diagonal(C, -np.inf)  # not the item's own text
    xmodal = float((labels[q][C.argmax(1)] == labels[q]).mean())
    return {"instance_p1": inst, "xmodal_class_p1": xmodal}


def test_training_learns_planted_cross_modal_structure(planted, tmp_path) -> None:
    cfg = tiny_config(epochs=8, batch_size=32)  # at 6 epochs the loss ratio sat at the 0.7 bound (0.69-0.70)
    torch.manual_seed(cfg.seed)  # the untrained model = the run's initialisation
    ds = FeatureDataset(planted)
    model = ScaleModel(cfg, {m: (s.max_tokens, s.dim) for m, s in ds.shapes.items()}).eval()
    with torch.no_grad():
        out = model(ds.get_batch(np.arange(len(ds))))
    before = _retrieval(product_embedding(out, model.embedding).numpy(), out.pooled.numpy(), out.present.numpy(),
                        ds.labels, ds.instances)
    res = train(planted, tmp_path / "run", cfg, progress=False)
    trained = Embedder.from_run(tmp_path / "run", "cpu")
    emb = trained.embed_features(planted)
    with torch.no_grad():  # the fused pooled outputs, as before training
        fused = trained.model(ds.get_batch(np.arange(len(ds)))).pooled.numpy()
    after = _retrieval(emb["vectors"], fused, emb["presence"], emb["labels"], emb["instances"])
    assert res.final_loss < 0.7 * res.first_epoch_loss, res.epoch_losses
    assert after["xmodal_class_p1"] > before["xmodal_class_p1"] + 0.25, (before, after)
    assert after["instance_p1"] > before["instance_p1"], (before, after)
    # the run directory holds what the CLI promises
    run = tmp_path / "run"
    for name in ("config.yaml", "provenance.json", "log.jsonl", "training.png", "result.json"):
        assert (run / name).is_file(), name
    rec = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    for k in ("step", "epoch", "loss", "loss_simcl", "loss_mask_table", "importance_audio", "lr", "samples_per_s"):
        assert k in rec, k
    assert rec["step"] == res.steps == cfg.epochs * 3
    assert set(res.importances) == set(cfg.modalities)
    assert all(0.0 <= v <= 1.0 for v in res.importances.values())


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_same_seed_same_losses_other_seed_differs(small, reference, tmp_path) -> None:
    run_a, a = reference
    b = train(small, tmp_path / "b", tiny_config(epochs=2), progress=False)
    c = train(small, tmp_path / "c", tiny_config(epochs=1), seed=1, progress=False)
    assert _losses(run_a) == _losses(tmp_path / "b")
    assert a.final_loss == b.final_loss
    assert _losses(tmp_path / "c") != _losses(run_a)[:c.steps]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run).weights))


def test_resume_ends_at_the_uninterrupted_loss_and_weights(small, reference, tmp_path) -> None:
    cfg = tiny_config(epochs=2)
    full_run, full = reference
    first = train(small, tmp_path / "part", cfg, epochs=1, progress=False)
    assert first.steps == full.steps // 2
    with pytest.raises(CheckpointError, match="--resume"):
        train(small, tmp_path / "part", cfg, epochs=2, progress=False)  # would overwrite the run
    resumed = train(small, tmp_path / "part", None, resume=True, epochs=2, progress=False)
    assert resumed.resumed_from_step == first.steps and resumed.steps == full.steps
    assert abs(resumed.final_loss - full.final_loss) < 1e-4
    wa, wb = _weights(full_run), _weights(tmp_path / "part")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    assert _losses(tmp_path / "part") == pytest.approx(_losses(full_run), abs=1e-5)


def test_max_steps_stops_mid_epoch_and_a_resume_with_more_steps_continues_exactly(small, reference,
                                                                                 tmp_path) -> None:
    full_run, full = reference  # 2 epochs of 3 steps
    cut = train(small, tmp_path / "cut", tiny_config(epochs=2, max_steps=4), progress=False)
    assert cut.steps == 4 and cut.epochs == 1  # the second epoch is open after one of its steps
    log = _losses(tmp_path / "cut")
    assert log == pytest.approx(_losses(full_run)[:4], abs=1e-6)
    assert cut.final_loss == pytest.approx(log[3]) and len(cut.epoch_losses) == 2
    # max_steps is a run-time setting: a resume may raise it, and the run ends as if never cut
    resumed = train(small, tmp_path / "cut", tiny_config(epochs=2, max_steps=6), resume=True, progress=False)
    assert resumed.steps == full.steps == 6 and resumed.final_loss == pytest.approx(full.final_loss, abs=1e-5)
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(full_run), abs=1e-5)


def test_nan_guard_keeps_last_checkpoint_and_mid_epoch_resume_is_exact(small, reference, tmp_path,
                                                                       monkeypatch) -> None:
    # checkpoint settings do not change the math: the reference run checkpointed per epoch
    cfg = tiny_config(epochs=2, checkpoint_unit="step", checkpoint_every=2)
    full_run, full = reference
    real = fuse_step.scale_loss
    calls = {"n": 0}

    def poisoned(*a, **kw):
        terms = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] == 3:
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(fuse_step, "scale_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="at step 3 ") as err:
        train(small, tmp_path / "run", cfg, progress=False)
    ck = latest_checkpoint(tmp_path / "run")
    assert ck.step == 2 and str(ck.weights) in str(err.value)
    assert not list((tmp_path / "run" / "checkpoints").glob("step-00000003*"))
    monkeypatch.setattr(fuse_step, "scale_loss", real)
    resumed = train(small, tmp_path / "run", None, resume=True, progress=False)  # step 2 of 3 in epoch 1
    assert abs(resumed.final_loss - full.final_loss) < 1e-4
    assert _losses(tmp_path / "run") == pytest.approx(_losses(full_run), abs=1e-5)


def test_stores_that_do_not_fit_are_refused(small, tmp_path) -> None:
    run = tmp_path / "run"
    train(small, run, tiny_config(epochs=1), progress=False)
    other = tmp_path / "other"
    write_synthetic_store(other, n_items=12, seed=5, prov_overrides={"text": {"backbone": "hf:another-model"}})
    with pytest.raises(StoreError, match="backbone"):
        Embedder.from_run(run, "cpu").embed_features(other)
    Embedder.from_run(run, "cpu").embed_features(other, ["image", "table"])  # the fitting stores alone are fine
    moved = tmp_path / "moved"  # same backbones, another corpus: fine to embed, not to resume on
    write_synthetic_store(moved, n_items=12, seed=6, prov_overrides={
        m: {"corpus_fingerprint": "corpus-2"} for m in ("image", "text", "table", "video", "audio")})
    # the product embedding, d_model wide
    embedder = Embedder.from_run(run, "cpu")
    assert embedder.embed_features(moved)["vectors"].shape == (12, embedder.model.embedding_dim)
    with pytest.raises(StoreError, match="corpus_fingerprint"):
        train(moved, run, None, resume=True, epochs=2, progress=False)


@pytest.mark.slow
def test_two_ray_train_workers_train_like_one_process_with_their_combined_batch(small, tmp_path, capfd) -> None:
    """2 workers x batch 8 (negatives gathered across them) = 1 process x batch 16, step by step:
    rank r takes the r-th of every 2 consecutive batches, which together are the one process's
    batch. Dropout and the masked losses (per-sample means on each rank) are off: what is left,
    SIMCL and the subset-consistency loss, must agree exactly (up to float summation order).
    The private local Ray has a dashboard: Ray Train's placement-group cleaner asks the State API
    about the controller every second, and without one it warned each time (63 lines in a
    one-minute run of `train.py --workers 2`)."""
    pytest.importorskip("ray.train.torch")
    from scalemm.fuse.distributed import train_distributed

    cfg = tiny_config(epochs=2, batch_size=8, dropout=0.0, masked_losses=False, subset_weight=1.0)
    two = train_distributed(small, tmp_path / "two", cfg, workers=2, progress=False)
    out, err = capfd.readouterr()
    assert "Failed to query Ray Train Controller" not in out + err, (out + err)[-3000:]
    one = train(small, tmp_path / "one", cfg.replace(batch_size=16), progress=False)
    assert two.steps == one.steps == 6
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
    wa, wb = load_file(two.checkpoint), load_file(one.checkpoint)
    assert set(wa) == set(wb)
    for k in wa:
        a, b = wa[k], wb[k]
        if k.endswith("qkv.bias"):  # the key bias: softmax ignores it, its gradient is float noise that
            d = a.shape[0] // 3     # AdamW's normalised step turns into +-lr; compare the q and v biases
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        assert float((a - b).abs().max()) < 2e-5, k

def test_the_importance_gate_trains_at_the_network_lr_and_stays_near_its_start(small, tmp_path) -> None:
    """The gate's ten scalars are ordinary parameters at the network's lr (no group of their own,
    no weight decay); Adam moves a parameter by about lr per step, so over a short run they stay
    near their start and the gate is in effect a fixed sharpening of the agreement."""
    cfg = tiny_config(epochs=2, importance="gated", subset_weight=1.0, simcl_weight=0.0, masked_losses=False)
    learner = fuse_step.build_learner(cfg, SMALL_SHAPES, torch.device("cpu"))
    assert len(learner.optimizer.param_groups) == 2
    groups = [g for g in learner.optimizer.param_groups
              if any(p is learner.model.harmonizer.gate_bias for p in g["params"])]
    assert len(groups) == 1
    assert groups[0]["initial_lr"] == cfg.lr and groups[0]["weight_decay"] == 0.0  # before the warm-up factor
    run = train(small, tmp_path / "g", cfg, progress=False)
    w = load_file(str(latest_checkpoint(Path(run.run_dir)).weights))
    start = torch.full_like(w["harmonizer.gate_bias"], -2.0)
    moved = float((w["harmonizer.gate_bias"] - start).abs().max())
    steps = 2 * 3  # 2 epochs of 3 batches
    assert 0 < moved <= 2 * steps * cfg.lr + 1e-6
