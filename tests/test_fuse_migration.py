"""Checkpoints of an older format load through one migration (fuse.checkpoint.migrate).

The fixtures in tests/data/scale-fuse-1/ were written by the code before the config rework
(format ``scale-fuse-1``, with its flat 49-key config; tests/data/scale-fuse-1/make_fixtures.py
wrote them and the embeddings that code gave a fixed batch). Today's code must load them, embed
that batch to the same vectors (under the embedding rule of their day where it has changed since:
fuse.model.EMBEDDING_RULE), and refuse a removed option set to a value it cannot reproduce,
naming it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fuse_helpers import random_batch
from scalemm.fuse.checkpoint import FORMAT, CheckpointError, load_weights
from scalemm.fuse.embedder import Embedder
from scalemm.fuse.model import product_embedding

DATA = Path(__file__).resolve().parent / "data" / "scale-fuse-1"


def load_model(weights: Path):
    """The checkpoint's model and what it records, loaded as every embedding loads it (the Embedder)."""
    e = Embedder.from_run(weights, "cpu")
    return e.model, {"config": e.config, "provenance": e.provenance}


def _rewrite(src: Path, dst: Path, change) -> Path:
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    change(cfg)
    meta["config"] = json.dumps(cfg)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize("name", ["gated", "plain", "shrunk"])
def test_an_old_checkpoint_loads_and_embeds_as_it_did(name) -> None:
    w = DATA / f"{name}.safetensors"
    with safe_open(str(w), framework="pt") as f:
        assert f.metadata()["format"] == "scale-fuse-1" != FORMAT
    model, info = load_model(w)
    cfg = info["config"]
    assert len(type(cfg).field_names()) <= 25
    old = json.loads(safe_open(str(w), framework="pt").metadata()["config"])
    # the moved settings kept their values
    assert cfg.embedding.source == old["embed_from"] and cfg.embedding.weighting == old["embed_weighting"]
    assert not hasattr(cfg.embedding, "importance_shrink")  # removed; the weights never depended on it
    assert cfg.embedding.identification_power == old["identification_power"]
    expected = np.load(DATA / "expected_embeddings.npz", allow_pickle=False)[name]
    h = model.harmonizer
    with torch.no_grad():
        out = model(random_batch(B=6, seed=1))
        emb = product_embedding(out, model.embedding).numpy()
        factor = h.identification_factor()
        if factor is not None:  # embedding rule 2 weighs the agreement's witnesses (fuse.model.EMBEDDING_RULE)
            # under rule 1, the plain agreement (the training one) times the factor, it embeds as it did
            plain = h.train()(out.enc_pooled.float(), out.present)[1] * factor
            h.eval()
            before = product_embedding(dataclasses.replace(out, importances=plain), model.embedding).numpy()
            np.testing.assert_allclose(before, expected, atol=1e-5)
            assert np.abs(emb - expected).max() > 1e-3  # and the rule did change the vectors
            return
    np.testing.assert_allclose(emb, expected, atol=1e-5)


def test_running_statistics_a_checkpoint_lacks_stay_zero() -> None:
    model, _ = load_model(DATA / "plain.safetensors")  # trained without the correction
    assert float(model.harmonizer.identification_updates.sum()) == 0.0
    trained, _ = load_model(DATA / "gated.safetensors")
    assert float(trained.harmonizer.identification_updates.min()) > 0  # kept in training, loaded
    assert "importance_mean" not in dict(trained.harmonizer.named_buffers())  # the retired one is dropped


@pytest.mark.parametrize("key, value", [("block_weight", 0.35), ("frozen_blocks", 0.1), ("gate_lr", 0.05),
                                        ("weight_scale", "none"), ("mask_loss", "smooth_l1")])
def test_a_removed_option_at_another_value_is_refused_by_name(tmp_path, key, value) -> None:
    w = _rewrite(DATA / "gated.safetensors", tmp_path / "x.safetensors", lambda c: c.__setitem__(key, value))
    with pytest.raises(CheckpointError, match=f"{key}: {value!r}.*removed"):
        load_weights(w)


def test_a_retired_option_loads_at_its_kept_value_and_is_refused_at_another(tmp_path) -> None:
    """contrast_on left the config (SIMCL contrasts the encoders' outputs): a checkpoint of the
    current format that records it at the kept value loads, one trained at another is refused."""
    from scalemm.fuse.checkpoint import save_checkpoint
    model, info = load_model(DATA / "gated.safetensors")
    ck = save_checkpoint(tmp_path / "run", 3, model, {}, info["config"], info["provenance"])
    for value in ("encoder", "fusion"):
        w = _rewrite(ck.weights, tmp_path / f"{value}.safetensors", lambda c, v=value: c.__setitem__("contrast_on", v))
        if value == "fusion":
            with pytest.raises(CheckpointError, match="contrast_on: 'fusion'.*removed"):
                load_weights(w)
        else:
            _, cfg, _, _ = load_weights(w)
            assert cfg == info["config"] and not hasattr(cfg, "contrast_on")


def test_a_checkpoint_from_before_the_corroborated_agreement_is_refused(tmp_path) -> None:
    w = _rewrite(DATA / "gated.safetensors", tmp_path / "x.safetensors", lambda c: c.pop("agreement"))
    with pytest.raises(CheckpointError, match="agreement: 'mean'"):
        load_weights(w)


def test_a_new_checkpoint_is_written_in_the_new_format_and_reads_back(tmp_path) -> None:
    from scalemm.fuse.checkpoint import save_checkpoint
    model, info = load_model(DATA / "gated.safetensors")
    ck = save_checkpoint(tmp_path / "run", 7, model, {}, info["config"], info["provenance"])
    with safe_open(str(ck.weights), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT
    assert "runtime" not in json.loads(meta["config"])  # where a run executes is not the model's
    _, cfg, _, step = load_weights(ck.weights)
    assert cfg == info["config"] and step == 7
