"""Embedding with a trained run (fuse.embedder.Embedder), modality ablations, and the command lines
(train, embed)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scalemm.store import StoreError
from scalemm.fuse.config import EmbedSettings
from scalemm.fuse.embedder import Embedder, Variant
from scalemm.fuse.model import product_embedding
from scalemm.fuse.reader import FeatureDataset
from scalemm.fuse.train import train
from fuse_helpers import tiny_config, write_synthetic_store
from cli_output import last_json

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("embed")
    feats = base / "feats"
    write_synthetic_store(feats, n_items=24, missing=0.2, seed=2)
    train(feats, base / "run", tiny_config(epochs=1), progress=False)
    return feats, base / "run"


def embedder(run: Path, **settings) -> Embedder:
    """The run's embedder on the CPU (embedding settings changed by ``settings``)."""
    emb = Embedder.from_run(run, "cpu")
    return Embedder.from_run(run, "cpu", dataclasses.replace(emb.settings, **settings)) if settings else emb


def test_the_embedding_is_d_model_wide_under_the_checkpoint_settings(trained) -> None:
    """Without modality heads the product embedding is d_model wide, made under the embedding
    settings the checkpoint records; other settings give another embedding of the same width."""
    feats, run = trained
    emb = embedder(run)
    res = emb.embed_features(feats, batch_size=7)
    model = emb.model
    assert model.embedding == emb.config.embedding == emb.settings == EmbedSettings(modality_heads=[])
    assert model.heads is None
    assert model.embedding_dim == model.cfg.d_model == 32
    ds = FeatureDataset(feats)
    batch = ds.get_batch(np.arange(len(ds)))
    with torch.no_grad():
        out = model(batch)
        ref = product_embedding(out, model.embedding).numpy()
        plain = product_embedding(out, EmbedSettings(weighting="sum")).numpy()
    assert res["vectors"].shape == ref.shape == plain.shape == (len(ds), 32)
    assert np.allclose(res["vectors"], ref, atol=1e-5)
    assert not np.allclose(plain, ref, atol=1e-3)


def test_embed_features_outputs(trained) -> None:
    feats, run = trained
    emb = embedder(run)
    res = emb.embed_features(feats, batch_size=7)
    ds = FeatureDataset(feats)
    n, M = len(ds), 5
    assert res["ids"] == ds.ids and res["labels"] == ds.labels and res["instances"] == ds.instances
    cfg = emb.config
    assert (cfg.embedding.source, cfg.embedding.weighting) == ("encoder", "importance")
    assert res["vectors"].shape == (n, 32) and res["vectors"].dtype == np.float32
    assert res["pooled"].shape == (n, M, 32) and res["presence"].shape == (n, M)
    assert res["importances"].shape == (n, M)
    pres = np.stack([ds.counts[m] > 0 for m in res["modalities"]], 1)
    assert np.array_equal(res["presence"], pres)
    norms = np.linalg.norm(res["vectors"], axis=1)
    assert np.allclose(norms[pres.any(1)], 1.0, atol=1e-5)
    # the vector is the importance-weighted sum of the L2-normalised pooled outputs of the
    # configured source (default embedding.source: encoder: "pooled" holds them), or of the fused
    # ones with source="fusion"
    w = np.where(pres, res["importances"], 0.0)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-6)

    def expected(z):
        zn = z / np.maximum(np.linalg.norm(z, axis=2, keepdims=True), 1e-12)
        s = (zn * w[..., None]).sum(1)
        return s / np.linalg.norm(s, axis=1, keepdims=True)
    assert np.allclose(res["vectors"], expected(res["pooled"]), atol=1e-5)
    fused = embedder(run, source="fusion").embed_features(feats, batch_size=7)
    assert np.allclose(fused["pooled"], res["pooled"])  # the encoders' outputs, whatever the source
    with torch.no_grad():
        fused_pooled = emb.model(ds.get_batch(np.arange(n))).pooled.float().numpy()
    assert np.allclose(fused["vectors"], expected(fused_pooled), atol=1e-5)
    assert not np.allclose(fused["vectors"], res["vectors"], atol=1e-3)
    assert (res["importances"][~pres] == 0).all()


def test_modality_subset_is_the_model_with_the_others_absent(trained) -> None:
    feats, run = trained
    emb = embedder(run)
    sub = emb.embed_features(feats, modalities=["text", "image"])
    assert sub["modalities"] == ["image", "text"] and sub["pooled"].shape[1] == 2
    model = emb.model
    batch = FeatureDataset(feats).get_batch(np.arange(24))
    for m in ("table", "video", "audio"):
        batch["present"][m][:] = False
    with torch.no_grad():
        out = model(batch)
        ref = product_embedding(out, model.embedding).numpy()
    assert np.allclose(sub["vectors"], ref, atol=1e-5)
    full = emb.embed_features(feats)
    assert not np.allclose(sub["vectors"], full["vectors"], atol=1e-3)
    with pytest.raises(StoreError, match="not on"):
        emb.embed_features(feats, modalities=["image", "smell"])


def test_embed_cli_writes_npz_without_pickle(trained, tmp_path, run_cli) -> None:
    feats, run = trained
    out_path = tmp_path / "e.npz"
    rc, out, err, _ = run_cli("embed.py", "--run", str(run), "--features", str(feats), "--out", str(out_path),
                              "--modalities", "image,text", "--no-progress")
    assert rc == 0, err
    assert last_json(out)["items"] == 24
    with np.load(out_path, allow_pickle=False) as z:
        for k in ("ids", "labels", "instances", "vectors", "presence", "importances", "modalities", "pooled"):
            assert k in z.files, k
        assert z["ids"].dtype.kind == "U" and z["vectors"].shape == (24, 32)
        ref = embedder(run).embed_features(feats, modalities=["image", "text"])
        assert np.allclose(z["vectors"], ref["vectors"]) and z["ids"].tolist() == ref["ids"]
        assert np.allclose(z["pooled"], ref["pooled"])  # the encoders' pooled outputs


def test_embed_cli_embedding_changes_the_settings_of_the_npz(trained, tmp_path, run_cli) -> None:
    """``--embedding KEY=VALUE`` embeds under the checkpoint's settings so changed (the vectors an
    embedder with those settings makes, not the default's); a bad key is a one-line error, and
    ``--index`` refuses it (search embeds its queries with the checkpoint's settings)."""
    feats, run = trained
    out_path = tmp_path / "sum.npz"
    rc, out, err, _ = run_cli("embed.py", "--run", str(run), "--features", str(feats), "--out", str(out_path),
                              "--embedding", "weighting=sum", "--no-progress")
    assert rc == 0, err
    assert last_json(out)["embedding"]["weighting"] == "sum"
    ref = embedder(run, weighting="sum").embed_features(feats)
    default = embedder(run).embed_features(feats)
    with np.load(out_path, allow_pickle=False) as z:
        assert np.allclose(z["vectors"], ref["vectors"], atol=1e-5)
        assert not np.allclose(z["vectors"], default["vectors"], atol=1e-3)
    rc, _, err, _ = run_cli("embed.py", "--run", str(run), "--features", str(feats), "--out", str(tmp_path / "x.npz"),
                            "--embedding", "weigthing=sum", "--no-progress")
    assert rc != 0 and "weigthing" in err and "Traceback" not in err
    rc, _, err, _ = run_cli("embed.py", "--run", str(run), "--features", str(feats), "--index", str(tmp_path / "ix"),
                            "--embedding", "weighting=sum", "--no-progress")
    assert rc != 0 and "--index" in err and not (tmp_path / "ix").exists()
    assert not (tmp_path / "x.npz").exists()


def test_embed_cli_on_the_folder_of_seed_runs_names_the_seed_runs(trained, tmp_path, run_cli) -> None:
    """pipelines/train.py --out holds one run per seed (seed-0/, ...): embed.py given that folder says
    which runs it holds, instead of "train first", and the seed's own folder embeds."""
    import shutil

    feats, run = trained
    shutil.copytree(run, tmp_path / "runs" / "seed-0")
    rc, out, err, _ = run_cli("embed.py", "--run", str(tmp_path / "runs"), "--features", str(feats),
                              "--out", str(tmp_path / "x.npz"), "--no-progress")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and out == "" and len(lines) == 1, err
    assert "seed-0" in lines[0] and "train first" not in lines[0] and not (tmp_path / "x.npz").exists()
    rc, _, err, _ = run_cli("embed.py", "--run", str(tmp_path / "runs" / "seed-0"), "--features", str(feats),
                            "--out", str(tmp_path / "x.npz"), "--no-progress")
    assert rc == 0 and (tmp_path / "x.npz").is_file(), err


@pytest.mark.parametrize("case", ["missing_features", "bad_config_key", "corrupt_weights", "corrupt_state",
                                  "resume_nothing"])
def test_cli_user_errors_are_one_line(case, trained, tmp_path, run_cli) -> None:
    feats, run = trained
    argv = ["--features", str(feats), "--out", str(tmp_path / "r"), "--no-progress"]
    expect = ""
    if case == "missing_features":
        argv[1] = str(tmp_path / "nowhere")
        expect = "nowhere"
    elif case == "bad_config_key":
        cfg = tmp_path / "c.yaml"
        cfg.write_text("lr: 1.0e-3\nwarmpu_steps: 3\n")
        argv += ["--config", str(cfg)]
        expect = "warmpu_steps"
    elif case in ("corrupt_weights", "corrupt_state"):
        import shutil
        shutil.copytree(run, tmp_path / "r")
        ck = sorted((tmp_path / "r" / "checkpoints").glob(
            "*.safetensors" if case == "corrupt_weights" else "*.state.pt"))[-1]
        ck.write_bytes(b"\x00garbage" * 10)
        argv += ["--resume"]
        expect = ck.name
    else:
        argv += ["--resume"]
        expect = "no checkpoint"
    rc, out, err, _ = run_cli("train.py", *argv)
    assert rc == 2, (out, err)
    assert out == ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert expect in lines[0] and "Traceback" not in err


def test_train_cli_last_line_is_json(tmp_path) -> None:
    feats = tmp_path / "feats"
    write_synthetic_store(feats, n_items=16, shards=1, seed=4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("d_model: 16\nheads: 2\nencoder_layers: 1\nfusion_layers: 1\nbatch_size: 8\n"
                   "train_split: all\nruntime:\n  threads: 1\n  tensorboard: true\n")
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "train.py"), "--features", str(feats),
                           "--out", str(tmp_path / "run"), "--config", str(cfg), "--epochs", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = last_json(proc.stdout)
    for k in ("final_loss", "steps", "seconds", "samples_per_s", "importances"):
        assert k in summary, k
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "training.png").stat().st_size > 1000


def test_seeds_resumed_without_a_config_start_the_missing_seeds_with_the_started_ones_config(tmp_path) -> None:
    """train.py --seeds 0,1 --resume without --config: seed 1, not started, trains with seed 0's
    config (not the defaults), its own seed, and seed 0 resumes as it was."""
    import yaml
    feats = tmp_path / "feats"
    write_synthetic_store(feats, n_items=16, shards=1, seed=4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("d_model: 16\nheads: 2\nencoder_layers: 1\nbatch_size: 8\nfrozen_skip: 3.0\n"
                   "train_split: all\nruntime:\n  threads: 1\n  tensorboard: false\n")
    out = tmp_path / "runs"
    base = [sys.executable, str(ROOT / "pipelines" / "train.py"), "--features", str(feats), "--out", str(out),
            "--no-progress"]
    first = subprocess.run(base + ["--config", str(cfg), "--seeds", "0", "--epochs", "1"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(base + ["--seeds", "0,1", "--resume"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    saved = {s: yaml.safe_load((out / f"seed-{s}" / "config.yaml").read_text()) for s in (0, 1)}
    assert saved[1]["seed"] == 1 and saved[0]["seed"] == 0
    for key in ("d_model", "heads", "frozen_skip", "epochs", "batch_size"):
        assert saved[1][key] == saved[0][key], key
    assert saved[1]["runtime"]["threads"] == 1
    assert last_json(again.stdout)["runs"][1]["steps"] == 2


def test_an_old_checkpoint_from_before_the_corrections_loads_as_trained(trained, tmp_path) -> None:
    """A scale-fuse-1 checkpoint saved before ``importance_shrink`` and ``identification_power``
    existed kept no running statistics and embedded without the corrections; it must load as it
    was trained (the identification rate off, its statistics zero), not with today's defaults."""
    import json
    import shutil
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from scalemm.fuse.checkpoint import FORMAT, load_weights, resolve_weights

    _, run = trained
    today = load_weights(run)[1].embedding
    assert today.identification_power > 0
    old = tmp_path / "old"
    shutil.copytree(run, old)
    w = resolve_weights(old)
    with safe_open(w, "pt") as f:
        meta = dict(f.metadata())
    assert meta["format"] == FORMAT
    cfg = json.loads(meta["config"])
    emb = cfg.pop("embedding")  # the old flat layout, without the two corrections' keys
    cfg.update(embed_from=emb["source"], embed_weighting=emb["weighting"], agreement="corroborated")
    meta.update(format="scale-fuse-1", config=json.dumps(cfg))
    tensors = load_file(w)
    assert tensors["harmonizer.identification_updates"].min() > 0  # kept in training
    save_file({k: v for k, v in tensors.items() if ".importance_" not in k and ".identification_" not in k},
              w, metadata=meta)
    cfg = load_weights(old)[1]
    assert cfg.embedding.identification_power == 0.0
    assert (cfg.embedding.source, cfg.embedding.weighting) == (emb["source"], emb["weighting"])
    model = Embedder.from_run(old, "cpu").model
    assert model.embedding_dim == cfg.d_model
    assert model.harmonizer.identification == 0
    assert float(model.harmonizer.identification_updates.sum()) == 0  # missing: left zero


def test_every_variant_equals_the_model_on_the_batch_with_those_modalities(trained) -> None:
    """Embedder.embed skips the joint transformer for encoder-sourced variants and fuses only the
    kept rows: the numbers must be those of the plain forward pass (model.fuse) all the same."""
    from scalemm.fuse.model import weighted_embedding  # noqa: F401 - the weighting under test
    from scalemm.fuse.variants import variant_presence

    feats, run = trained
    emb = embedder(run)
    model = emb.model
    ds, loader = emb.open(feats, batch_size=10)
    variants = [Variant("scale"), Variant("fused", source="fusion"), Variant("t+i", ("text", "image")),
                Variant("drop", drop=0.4, drop_seed=3), Variant("fused_drop", drop=0.4, drop_seed=3, source="fusion")]
    res = emb.embed(loader, variants)
    batch = ds.get_batch(np.arange(len(ds)))
    with torch.no_grad():
        enc = model.encode(batch)
        full = model.fuse(enc)
        assert np.allclose(res["importances"], full.importances.numpy(), atol=1e-6)
        assert np.allclose(res["enc_pooled"], full.enc_pooled.numpy(), atol=1e-6)
        for v in variants:
            keep = torch.from_numpy(variant_presence(v, model.modalities, ds.ids))
            out = model.fuse(enc, keep)
            ref = product_embedding(out, dataclasses.replace(emb.config.embedding,
                                                             source=v.source or model.embedding.source))
            assert np.allclose(res["vectors"][v.name], ref.numpy(), atol=1e-5), v.name
    # at scale: only some rows kept in memory, a writer gets every row of its variant
    rows = np.array([0, 3, 9, 10, 11, 23])
    chunks: list[np.ndarray] = []
    part = emb.embed(loader, variants, rows=rows, writers={"scale": chunks.append})
    assert part["ids"] == [ds.ids[i] for i in rows] and part["presence"].shape == (6, 5)
    for v in variants:
        assert np.allclose(part["vectors"][v.name], res["vectors"][v.name][rows], atol=1e-5), v.name
    assert np.allclose(np.concatenate(chunks), res["vectors"]["scale"], atol=1e-6)
    # without a writer only the kept rows are encoded; the title's and picture's outputs alone kept
    alone = emb.embed(loader, variants, rows=rows, pooled=("text", "image"))
    assert alone["ids"] == part["ids"] and alone["pooled_modalities"] == ["text", "image"]
    cols = [model.modalities.index(m) for m in alone["pooled_modalities"]]
    assert np.allclose(alone["enc_pooled"], res["enc_pooled"][rows][:, cols], atol=1e-5)
    for v in variants:
        assert np.allclose(alone["vectors"][v.name], res["vectors"][v.name][rows], atol=1e-5), v.name
    # no encoder outputs kept (a pass whose vectors alone are read), the same vectors
    none = emb.embed(loader, variants, rows=rows, pooled=())
    assert none["pooled_modalities"] == [] and none["enc_pooled"].shape == (len(rows), 0, model.cfg.d_model)
    for v in variants:
        assert np.allclose(none["vectors"][v.name], res["vectors"][v.name][rows], atol=1e-5), v.name
    with pytest.raises(ValueError, match="yielded 0 of the 2 rows"):  # rows past the loader's end
        emb.embed(loader, variants, rows=np.array([len(ds) + 1, len(ds) + 2]))
    # some variants kept for fewer rows (the evaluated split, its queries), with and without a writer
    few = {"t+i": np.array([3, 10, 23]), "drop": np.array([9]), "fused_drop": np.array([0, 11])}
    for w in ({}, {"scale": [].append}):
        sub = emb.embed(loader, variants, rows=rows, subsets=few, writers=w)
        assert sub["ids"] == part["ids"] and np.allclose(sub["vectors"]["scale"], part["vectors"]["scale"], atol=1e-6)
        for name, r in few.items():
            assert np.allclose(sub["vectors"][name], res["vectors"][name][r], atol=1e-5), name
    every = emb.embed(loader, variants, subsets=few)  # no rows: every item, the subsets still apply
    assert all(len(every["vectors"][n]) == len(r) for n, r in few.items()) and len(every["ids"]) == len(ds)
    with pytest.raises(ValueError, match="not sorted positions among the rows kept"):
        emb.embed(loader, variants, rows=rows, subsets={"drop": np.array([1])})
    with pytest.raises(ValueError, match="not embedded"):
        emb.embed(loader, variants, rows=rows, subsets={"nope": np.array([0])})
