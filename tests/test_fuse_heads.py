"""The narrow modality heads beside the summed embedding (fuse.heads): what the fit learns, how
the embedding is assembled, and that a trained run carries them into every embedding."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import scalemm.fuse.heads as heads_module
from scalemm.fuse.embedder import Embedder
from scalemm.fuse.heads import HEAD_DIM, SUM_SHARE, ModalityHeads, fit_heads, sample_instances, with_heads
from scalemm.fuse.model import weighted_embedding
from scalemm.fuse.reader import FeatureDataset
from scalemm.fuse.train import train
from fuse_helpers import tiny_config, write_synthetic_store

torch.set_num_threads(1)
MODS = ["image", "text", "table", "video", "audio"]


def _listings(n_instances: int = 40, d: int = 128, seed: int = 0):
    """Two listings per instance; in the image and text outputs each listing has its own loud
    noise in the first half of the dimensions and its instance's quieter signal in the second:
    the PCA of the outputs keeps the noise, the instance needs the quiet half."""
    rng = np.random.default_rng(seed)
    n = 2 * n_instances
    inst = np.repeat(np.arange(n_instances), 2)
    z = np.zeros((n, len(MODS), d), np.float32)
    for c in (0, 1):
        signal = rng.normal(0, 0.5, (n_instances, d // 2))[inst]
        z[:, c, : d // 2] = rng.normal(0, 2.0, (n, d // 2))
        z[:, c, d // 2:] = signal + rng.normal(0, 0.1, (n, d // 2))
    z[:, 2:] = rng.normal(0, 1.0, (n, len(MODS) - 2, d))
    present = np.ones((n, len(MODS)), bool)
    importances = np.ones((n, len(MODS)), np.float32)
    return z, present, importances, [f"i{i}" for i in inst], [f"p{i}" for i in range(n)], inst


def _sibling_found(heads: ModalityHeads, z, present, inst) -> float:
    with torch.no_grad():
        h = heads(torch.as_tensor(z), torch.as_tensor(present), MODS).numpy()
    sim = h @ h.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(inst[sim.argmax(1)] == inst))


# None: all 80 products in every step; 61: each step draws whole instances, up to 61 products (30
# of the 40 instances: fewer negatives a step, so a lower floor)
@pytest.mark.parametrize("batch, floor", [(None, 0.9), (61, 0.8)])
def test_the_fitted_heads_find_the_other_listing_that_their_pca_start_misses(batch, floor, monkeypatch) -> None:
    if batch is not None:
        monkeypatch.setattr(heads_module, "BATCH", batch)
    z, present, imp, instances, ids, inst = _listings()
    start, _ = fit_heads(z, present, instances, ids, MODS, ["text", "image"], steps=0)
    fitted, fit = fit_heads(z, present, instances, ids, MODS, ["text", "image"])
    assert fitted.names == ["image", "text"] and fitted.dim == HEAD_DIM
    assert fit["final_loss"] < fit["first_loss"] and fit["products"] == len(ids)
    before, after = _sibling_found(start, z, present, inst), _sibling_found(fitted, z, present, inst)
    assert before < 0.5 and after > floor, (before, after)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_the_fit_runs_on_the_device_it_is_given_with_the_cpu_draws(device, monkeypatch) -> None:
    """Training passes the model's device; the start and the draws are the CPU's, so the fit on any
    device ends where the CPU fit does, within rounding (here with steps that draw instances)."""
    monkeypatch.setattr(heads_module, "BATCH", 61)
    z, present, imp, instances, ids, _ = _listings()
    ref, ref_fit = fit_heads(z, present, instances, ids, MODS, ["text", "image"], steps=20)
    got, fit = fit_heads(z, present, instances, ids, MODS, ["text", "image"], steps=20, device=device)
    assert next(got.parameters()).device.type == device
    assert fit["products"] == ref_fit["products"]
    assert abs(fit["final_loss"] - ref_fit["final_loss"]) < 1e-3 * max(1.0, ref_fit["final_loss"])
    for m in ref.names:
        assert torch.allclose(got.proj[m].weight.cpu(), ref.proj[m].weight, atol=1e-3)


def test_no_heads_are_fitted_for_modalities_no_product_carries() -> None:
    z, present, imp, instances, ids, _ = _listings(n_instances=4)
    present[:, :2] = False
    heads, fit = fit_heads(z, present, instances, ids, MODS, ["text", "image"])
    assert heads is None and fit == {}


def test_the_embedding_puts_the_sum_beside_the_heads_and_keeps_the_sum_where_none_is_present() -> None:
    z, present, imp, *_ = _listings(n_instances=3)
    present[0, :2] = False  # product 0 has neither a title nor a picture
    heads = ModalityHeads(["image", "text"], z.shape[-1])
    zt, pt, it = torch.as_tensor(z), torch.as_tensor(present), torch.as_tensor(imp)
    with torch.no_grad():
        summed = weighted_embedding(zt, pt, it, "importance")
        h = heads(zt, pt, MODS)
        emb = with_heads(summed, h)
    d = z.shape[-1]
    assert emb.shape == (len(z), d + 2 * HEAD_DIM)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(z)), atol=1e-5)
    assert torch.allclose(emb[0, :d], summed[0], atol=1e-6) and float(emb[0, d:].abs().max()) == 0.0
    # elsewhere the sum holds SUM_SHARE of the squared norm
    assert torch.allclose(emb[1:, :d].pow(2).sum(1), torch.full((len(z) - 1,), SUM_SHARE), atol=1e-5)


def test_the_heads_weigh_the_present_headed_modalities_equally_whatever_else_is_present() -> None:
    """Each present head at equal weight: a product's heads do not move when a modality without a
    head (a table) joins or leaves it, and an absent headed modality gives its block zero."""
    z, present, *_ = _listings(n_instances=3)
    heads = ModalityHeads(["image", "text"], z.shape[-1])
    zt, pt = torch.as_tensor(z), torch.as_tensor(present)
    no_table = pt.clone()
    no_table[:, MODS.index("table")] = False
    no_text = pt.clone()
    no_text[:, MODS.index("text")] = False
    with torch.no_grad():
        h, h_no_table, h_no_text = heads(zt, pt, MODS), heads(zt, no_table, MODS), heads(zt, no_text, MODS)
        img = torch.nn.functional.normalize(heads.proj["image"](zt[:, 0]), dim=-1)
    assert torch.equal(h, h_no_table)
    block = [b.norm(dim=1) for b in h.split(HEAD_DIM, dim=1)]  # image, text: 1/sqrt(2) each
    assert torch.allclose(block[0], block[1]) and torch.allclose(block[0], torch.full_like(block[0], 0.5 ** 0.5))
    assert torch.allclose(h_no_text[:, :HEAD_DIM], img, atol=1e-6) and float(h_no_text[:, HEAD_DIM:].abs().max()) == 0


def test_instances_are_sampled_whole_up_to_the_cap() -> None:
    instances = [f"i{i // 3}" for i in range(30)] + [""] * 5
    ids = [f"p{i}" for i in range(35)]
    assert np.array_equal(sample_instances(instances, ids, 100, seed=0), np.arange(35))
    rows = sample_instances(instances, ids, 10, seed=1)
    assert 1 <= len(rows) <= 10 and np.all(np.diff(rows) > 0)
    taken = {instances[i] for i in rows if instances[i]}
    for name in taken:  # every listing of a sampled instance is in
        assert all(i in rows for i in range(35) if instances[i] == name)


def test_a_trained_run_embeds_with_its_heads_and_without_them_when_told(tmp_path) -> None:
    feats = tmp_path / "feats"
    write_synthetic_store(feats, n_items=24, missing=0.2, seed=2)
    res = train(feats, tmp_path / "run", tiny_config(epochs=1, modality_heads=["text", "image"]), progress=False)
    assert res.heads["modalities"] == ["image", "text"] and res.heads["products"] > 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["heads"]["dim"] == 32
    emb = Embedder.from_run(tmp_path / "run", "cpu")
    assert emb.model.active_heads == ["image", "text"] and emb.dim == 32 + 2 * 32
    with_h = emb.embed_features(feats, batch_size=7)["vectors"]
    assert with_h.shape == (24, 96)
    assert np.allclose(np.linalg.norm(with_h, axis=1), 1.0, atol=1e-5)

    plain = Embedder.from_run(tmp_path / "run", "cpu", dataclasses.replace(emb.settings, modality_heads=[]))
    assert plain.dim == 32
    sum_only = plain.embed_features(feats, batch_size=7)["vectors"]
    ds = FeatureDataset(feats)
    with torch.no_grad():
        out = plain.model(ds.get_batch(np.arange(len(ds))))
        ref = weighted_embedding(out.enc_pooled, out.present, out.importances, "importance").numpy()
    assert np.allclose(sum_only, ref, atol=1e-5)
    has = np.linalg.norm(with_h[:, 32:], axis=1) > 0  # products with a title or a picture
    assert has.any()
    assert np.allclose(with_h[has, :32] / np.sqrt(SUM_SHARE), sum_only[has], atol=1e-4)
    assert np.allclose(with_h[~has, :32], sum_only[~has], atol=1e-5)


def test_an_evaluation_scores_one_run_with_and_without_its_heads(tmp_path) -> None:
    """``--model scale_sum=RUN --embedding scale_sum:modality_heads=[]``: the same checkpoint loaded
    twice, embedding with its heads (scale) and with the sum alone (scale_sum); a bad setting is
    refused before anything is embedded."""
    from scalemm.errors import ConfigError
    from scalemm.evaluate.loading import load_models

    feats = tmp_path / "feats"
    write_synthetic_store(feats, n_items=24, missing=0.2, seed=2)
    train(feats, tmp_path / "run", tiny_config(epochs=1, modality_heads=["text", "image"], train_split="train"),
          progress=False)
    models = load_models({"scale": tmp_path / "run", "scale_sum": tmp_path / "run"}, "test",
                         {"scale_sum": {"modality_heads": []}})
    (scale,), (plain,) = models.scale, models.others["scale_sum"]
    assert scale.embedder.dim == 96 and scale.embedder.model.active_heads == ["image", "text"]
    assert plain.embedder.dim == 32 and plain.embedder.model.active_heads == []
    assert plain.embedder.settings.weighting == scale.embedder.settings.weighting  # only what was asked changes
    with pytest.raises(ConfigError, match="modality_heads names unknown modalities"):
        load_models({"scale": tmp_path / "run", "x": tmp_path / "run"}, "test", {"x": {"modality_heads": ["smell"]}})
