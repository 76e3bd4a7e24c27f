"""The frozen skip's map (fuse.skip): fitted from the train split before the first step, kept by
the checkpoint, given to the untrained baseline; checkpoints from before keep the random map."""

from __future__ import annotations

import json

import numpy as np
import torch

from scalemm.fuse.embedder import Embedder
from scalemm.fuse.model import ScaleModel
from scalemm.fuse.reader import FeatureDataset
from scalemm.fuse.skip import blocks, principal_map
from scalemm.fuse.train import train
from scalemm.splits import assign, rows_of
from fuse_helpers import SMALL_SHAPES, random_batch, tiny_config, write_synthetic_store

torch.set_num_threads(1)
MODS = ["image", "text", "table", "video", "audio"]


def test_each_modality_gets_its_own_columns_and_together_they_fill_the_width() -> None:
    for d in (32, 384, 7):
        cols = blocks(MODS, d)
        taken = np.concatenate([np.arange(d)[c] for c in cols.values()])
        assert sorted(taken.tolist()) == list(range(d))  # every column once
        sizes = [c.stop - c.start for c in cols.values()]
        assert max(sizes) - min(sizes) <= 1


def test_the_map_holds_the_top_principal_directions_in_its_columns_only() -> None:
    rng = np.random.default_rng(0)
    dim, d = 24, 40
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    scales = np.geomspace(10, 0.1, dim)
    x = (rng.normal(size=(300, dim)) * scales) @ basis.T + 5 * rng.normal(size=dim)
    cols = slice(8, 14)
    mu, w = principal_map(x, cols, d)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(mu, u.mean(0))
    outside = np.ones(d, bool)
    outside[cols] = False
    assert np.abs(w[:, outside]).max() == 0
    inside = w[:, cols]
    assert np.allclose(inside.T @ inside, np.eye(6), atol=1e-8)  # orthonormal directions
    # they keep as much of the centred variance as any 6 directions can (the top singular values)
    c = u - mu
    s = np.linalg.svd(c, compute_uv=False)
    assert np.isclose(np.linalg.norm(c @ inside) ** 2, (s[:6] ** 2).sum(), rtol=1e-6)
    # three products span two directions: the rest of the columns stay zero
    _, w3 = principal_map(x[:3], cols, d)
    assert int((np.abs(w3).sum(0) > 0).sum()) == 2


def _token_means(ds: FeatureDataset, rows: np.ndarray, m: str) -> np.ndarray:
    b = ds.get_batch([int(i) for i in rows])
    tok, valid = b["tokens"][m].double().numpy(), b["mask"][m].numpy()
    keep = valid.any(1)
    mean = (tok * valid[..., None]).sum(1)[keep] / valid.sum(1)[keep][:, None]
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def test_training_fixes_the_maps_from_the_train_split_and_the_checkpoint_keeps_them(tmp_path) -> None:
    feats = tmp_path / "feats"
    write_synthetic_store(feats, n_items=48, missing=0.2, seed=3)
    cfg = tiny_config(epochs=1, frozen_skip=25.0, train_split="train", split_seed=1)
    res = train(feats, tmp_path / "run", cfg, progress=False)
    assert res.steps > 0
    emb = Embedder.from_run(tmp_path / "run", "cpu")
    ds = FeatureDataset(feats)
    train_rows = rows_of(assign(ds.instances, ds.ids, cfg.split_spec()), "train")
    assert 0 < len(train_rows) < len(ds)
    cols = blocks(emb.model.modalities, cfg.d_model)
    # the run's result says what the fit read: every train product here (fewer than MAX_ROWS),
    # per modality the ones that have it, and each modality's columns
    fit = json.loads((tmp_path / "run" / "result.json").read_text())["skip_maps"]
    assert fit["products"] == len(train_rows)
    assert min(fit["rows"].values()) < len(train_rows)  # some products lack a modality
    for m in emb.model.modalities:
        u = _token_means(ds, train_rows, m)  # the unit vectors of the train products that have m
        assert fit["rows"][m] == len(u)
        assert fit["columns"][m] == [cols[m].start, cols[m].stop]
        enc = emb.model.encoders[m]
        # the centre is the train products' mean unit vector, not every product's
        assert np.allclose(enc.skip_mu.numpy(), u.mean(0), atol=1e-5)
        assert not np.allclose(enc.skip_mu.numpy(), _token_means(ds, np.arange(len(ds)), m).mean(0), atol=1e-4)
        w = enc.skip_map.numpy()
        outside = np.ones(cfg.d_model, bool)
        outside[cols[m]] = False
        assert np.abs(w[:, outside]).max() == 0 and np.abs(w[:, cols[m]]).max() > 0
        # and the whole map is what the fit gives on those products: training did not move it
        _, ref = principal_map(u, cols[m], cfg.d_model)
        used = np.abs(ref).sum(0) > 0
        assert np.allclose(np.abs(w[:, used].T @ ref[:, used]), np.eye(int(used.sum())), atol=1e-4)

    # scale_untrained is what training started from: the same maps, none of the trained weights
    blank = Embedder.untrained(emb)
    for m in emb.model.modalities:
        assert torch.equal(blank.model.encoders[m].skip_map, emb.model.encoders[m].skip_map)
        assert torch.equal(blank.model.encoders[m].skip_mu, emb.model.encoders[m].skip_mu)
    assert not torch.equal(blank.model.encoders["text"].proj.weight, emb.model.encoders["text"].proj.weight)

    # a resumed run keeps the checkpoint's maps and fits nothing: its result says so
    more = train(feats, tmp_path / "run", None, resume=True, epochs=2, progress=False)
    assert more.resumed_from_step == res.steps and more.steps > res.steps and more.skip_maps == {}
    again = Embedder.from_run(tmp_path / "run", "cpu")
    for m in emb.model.modalities:
        assert torch.equal(again.model.encoders[m].skip_map, emb.model.encoders[m].skip_map)


def test_a_checkpoint_from_before_the_fit_embeds_with_the_fixed_random_map() -> None:
    cfg = tiny_config(frozen_skip=25.0, fusion_layers=0)
    torch.manual_seed(0)
    old = ScaleModel(cfg, SMALL_SHAPES).eval()
    weights = {k: v for k, v in old.state_dict().items() if not k.endswith((".skip_map", ".skip_mu"))}
    assert len(weights) == len(old.state_dict()) - 2 * len(old.modalities)
    model = ScaleModel(cfg, SMALL_SHAPES)
    for m in model.modalities:  # maps fitted (here: anything else) before the old weights arrive
        enc = model.encoders[m]
        enc.set_skip(torch.randn(enc.skip_mu.shape), torch.randn(enc.skip_map.shape))
    model.load_trained(weights)
    model.eval()
    batch = random_batch(B=5, shapes=SMALL_SHAPES, seed=4)
    # the first token is the encoder's plus 25 times the unit vector of the visible tokens' mean
    # through the seeded random map, uncentred: what such a checkpoint was trained with
    for m in model.modalities:
        enc, ref = model.encoders[m], old.encoders[m]
        assert torch.equal(enc.skip_map, ref.skip_map) and not enc.skip_mu.any()
        tok, valid = batch["tokens"][m], batch["mask"][m] & batch["present"][m][:, None]
        with torch.no_grad():
            got, _ = enc(tok, valid, None)
            enc.skip = 0.0
            bare, _ = enc(tok, valid, None)
            enc.skip = 25.0
        mean = (tok * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)
        want = torch.nn.functional.normalize(mean @ ref.skip_map, dim=-1) * 25.0
        want[~valid.any(1)] = 0.0
        assert valid.any(1).any()
        assert torch.allclose(got[:, 0] - bare[:, 0], want, atol=1e-4)
    # a checkpoint that lacks one part of a map is not one from before: it is refused
    broken = {k: v for k, v in old.state_dict().items() if k != "encoders.text.skip_mu"}
    try:
        ScaleModel(cfg, SMALL_SHAPES).load_trained(broken)
    except RuntimeError as e:
        assert "skip_mu" in str(e)
    else:
        raise AssertionError("a half-missing skip map was accepted")
