"""pipelines/evaluate.py end to end on a small store: the split protocol, seeds, metrics.json's
keys, and a trained SCALE that beats the same model untrained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fuse_helpers import tiny_config, write_synthetic_store
from scalemm.splits import SPLITS, SplitSpec, assign
from cli_output import last_json

torch.set_num_threads(1)
pytestmark = pytest.mark.slow  # trains five small runs, then evaluates through the command line
METHOD_KEYS = {"coarse": "mAP@1", "fine": "mAP@1", "classification": "accuracy", "clustering": "nmi"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from scalemm.fuse.checkpoint import save_checkpoint
    from scalemm.fuse.model import ScaleModel
    from scalemm.fuse.reader import FeatureDataset
    from scalemm.fuse.train import train

    base = tmp_path_factory.mktemp("evalrun")
    feats = base / "feats"
    write_synthetic_store(feats, n_items=160, nuisance=1.5, noise=0.5, missing=0.1, seed=5)
    # split seed 1, the split these tests were written on: on split seed 2 (the default since the
    # modality heads) this small store's tiny model still leads the untrained one on fine mAP@1 by
    # more than 0.1, but the paired interval's lower bound is -0.07 (30 test listings)
    cfg = tiny_config(epochs=8, batch_size=32, train_split="train", split_seed=1)
    for s in (0, 1):
        train(feats, base / "scale" / f"seed-{s}", cfg, seed=s, progress=False)
        train(feats, base / "uniform" / f"seed-{s}", cfg.replace(harmonize=False), seed=s, progress=False)
    # the same model, untrained: its initialisation saved as a checkpoint of step 0
    ds = FeatureDataset(feats)
    torch.manual_seed(cfg.seed)
    model = ScaleModel(cfg, {m: (s.max_tokens, s.dim) for m, s in ds.shapes.items()})
    save_checkpoint(base / "untrained", 0, model, {}, cfg, ds.provenance)
    train(feats, base / "seen", cfg.replace(train_split="all", epochs=1), progress=False)
    return {"feats": feats, "scale": base / "scale", "uniform": base / "uniform", "untrained": base / "untrained",
            "seen": base / "seen", "base": base}


def _evaluate(run_cli, runs, checkpoint: Path, out: Path, *extra: str) -> dict:
    rc, stdout, err, _ = run_cli("evaluate.py", "--features", str(runs["feats"]), "--checkpoint", str(checkpoint),
                                 "--out", str(out), *extra)
    assert rc == 0, err[-3000:]
    summary = last_json(stdout)
    assert summary["out"] == str(out)
    return json.loads((out / "metrics.json").read_text())


def test_metrics_json_keys_split_and_seeds(runs, run_cli, tmp_path) -> None:
    m = _evaluate(run_cli, runs, runs["scale"], tmp_path / "eval", "--uniform-checkpoint", str(runs["uniform"]),
                  "--model", f"scale_paper={runs['scale'] / 'seed-1'}")
    assert m["seeds"] == [0, 1]
    baselines = {"concat_frozen", "concat_text_image", "concat_weighted", "concat_pca", "scale_untrained"}
    names = {"scale", "scale_fused", "scale_uniform", "scale_paper", *baselines,
             *(f"frozen_{x}" for x in ("image", "text", "table", "video", "audio"))}
    assert set(m["methods"]) == names
    assert m["models"] == ["scale", "scale_uniform", "scale_paper"]
    assert m["runs"]["scale_paper"] == [str(runs["scale"] / "seed-1")] and len(m["runs"]["scale_uniform"]) == 2
    # a model given once is scored once (its single seed paired with the first scale seed)
    assert len(m["per_seed"]["methods"]["scale_paper"]) == 1
    # the default embedding's width, and every method's
    from scalemm.fuse.embedder import Embedder
    width = Embedder.from_run(runs["scale"] / "seed-0", "cpu").dim
    assert m["embedding_dim"] == width == m["dims"]["scale"] and set(m["dims"]) == names
    assert m["dims"]["concat_text_image"] == m["dims"]["frozen_text"] + m["dims"]["frozen_image"]
    assert m["dims"]["concat_pca"] == min(width, m["split"]["sizes"]["train"], m["dims"]["concat_frozen"])
    assert m["dims"]["scale_untrained"] == width
    b = m["baselines"]
    assert b["concat_weighted"]["chosen_on"] == "val" and b["concat_weighted"]["chosen_on_reported_split"] is False
    assert b["concat_weighted"]["val_products"] == m["split"]["sizes"]["val"]
    assert set(b["concat_weighted"]["weights"]) == {"image", "text", "table", "video", "audio"}
    assert b["concat_pca"]["fitted_on"] == "train" and b["concat_pca"]["fitted_on_products"] == m["split"]["sizes"]["train"]
    # the paired bootstrap: scale minus every other method, on the figures of "methods"
    assert set(m["paired"]) == names - {"scale"}
    assert m["paired_bootstrap"]["resamples"] == 1000 and m["paired_bootstrap"]["products"] == m["evaluated_items"]
    for other, p in m["paired"].items():
        for task, (sec, key) in {"coarse": ("coarse", "mAP@1"), "fine": ("fine", "mAP@1"),
                                 "classification": ("classification", "accuracy")}.items():
            c = p[task]
            want = m["methods"]["scale"][sec][key]["mean"] - m["methods"][other][sec][key]["mean"]
            assert c["diff"] == pytest.approx(want, abs=1e-9) and -1 <= c["lo"] <= c["hi"] <= 1, (other, task, c)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Paired comparison" in report and "concat_weighted" in report and f"{width} floats" in report
    for name in names:
        for sec, key in METHOD_KEYS.items():
            v = m["methods"][name][sec][key]
            assert set(v) == {"mean", "std"} and 0 <= v["mean"] <= 1 and v["std"] >= 0, (name, sec, v)
        # the per-seed figures are what the mean and std summarise
        per = [r["coarse"]["mAP@1"] for r in m["per_seed"]["methods"][name]]
        assert len(per) == (1 if name == "scale_paper" else 2)
        assert m["methods"][name]["coarse"]["mAP@1"]["mean"] == pytest.approx(np.mean(per))
    assert set(m["ablation"]) == {"text", "text+image", "text+image+table", "text+image+table+video",
                                  "text+image+table+video+audio"}
    # each modality added: the subset minus the one before it, paired over the same products
    steps = ["text", "text+image", "text+image+table", "text+image+table+video", "text+image+table+video+audio"]
    assert list(m["ablation_paired"]) == steps[1:]
    for prev, cur in zip(steps, steps[1:]):
        for task in ("coarse", "fine"):
            c = m["ablation_paired"][cur][task]
            want = m["ablation"][cur][task]["mAP@1"]["mean"] - m["ablation"][prev][task]["mAP@1"]["mean"]
            assert c["diff"] == pytest.approx(want, abs=1e-9) and -1 <= c["lo"] <= c["hi"] <= 1, (cur, task, c)
    assert "fine mAP@1 added" in report
    # the split: by instance, recorded with its sizes; every instance in one split only
    sp = m["split"]
    assert sp["by"] == "instance" and sp["evaluated_on"] == "test" and sum(sp["sizes"].values()) == m["items"]
    from scalemm.fuse.reader import FeatureDataset
    ds = FeatureDataset(runs["feats"])
    names_of = assign(ds.instances, ds.ids, SplitSpec(sp["seed"], tuple(sp["fractions"])))
    assert {s: int((names_of == s).sum()) for s in SPLITS} == sp["sizes"]
    for inst in set(ds.instances):
        assert len({names_of[i] for i, x in enumerate(ds.instances) if x == inst}) == 1
    assert m["evaluated_items"] == sp["sizes"]["test"]
    rob = m["robustness"]["methods"]["scale"]
    assert m["robustness"]["drop_prob"] == 0.3 and 0 <= rob["coarse_fraction_of_full"]["mean"] <= 1.5
    # each seed's figure is the mean over independent drop draws (5 by default), each kept
    assert m["robustness"]["draws"] == 5
    for name in ("scale", "scale_uniform", "concat_frozen"):
        draws = m["per_seed"]["robustness_draws"][name]
        assert len(draws) == 2 and all(len(d) == 5 for d in draws)
        for d, seed_fig in zip(draws, m["per_seed"]["robustness"][name]):
            assert seed_fig["coarse_mAP@1"] == pytest.approx(np.mean([x["coarse_mAP@1"] for x in d]))
        assert m["robustness"]["methods"][name]["coarse_mAP@1"]["mean"] == pytest.approx(
            np.mean([np.mean([x["coarse_mAP@1"] for x in d]) for d in draws]))
    assert set(m["importance"]["mean"]) == {"image", "text", "table", "video", "audio"}
    assert (tmp_path / "eval" / "gallery.html").is_file() and (tmp_path / "eval" / "report.md").is_file()
    rc, stdout, err, _ = run_cli("evaluate.py", "--out", str(tmp_path / "eval"), "--rebuild-index")
    assert rc == 0, err
    assert last_json(stdout)["same_as_metrics_json"] is True


def test_trained_scale_beats_the_untrained_model(runs, run_cli, tmp_path) -> None:
    trained = _evaluate(run_cli, runs, runs["scale"] / "seed-0", tmp_path / "trained")
    untrained = _evaluate(run_cli, runs, runs["untrained"], tmp_path / "untrained")
    t, u = trained["methods"]["scale"], untrained["methods"]["scale"]
    assert t["fine"]["mAP@1"]["mean"] > u["fine"]["mAP@1"]["mean"] + 0.1, (t["fine"], u["fine"])
    assert t["coarse"]["mAP@1"]["mean"] > u["coarse"]["mAP@1"]["mean"], (t["coarse"], u["coarse"])
    # the frozen baselines do not depend on the model
    assert trained["methods"]["frozen_text"] == untrained["methods"]["frozen_text"]
    # scale_untrained is that same model at initialisation (same config and seed), built by the evaluation
    assert trained["methods"]["scale_untrained"] == u
    assert trained["paired"]["scale_untrained"]["fine"]["lo"] > 0


def test_a_run_that_saw_the_test_split_is_refused(runs, run_cli, tmp_path) -> None:
    rc, out, err, _ = run_cli("evaluate.py", "--features", str(runs["feats"]), "--checkpoint", str(runs["seen"]),
                              "--out", str(tmp_path / "e"))
    assert rc == 2 and "Traceback" not in err
    assert "train_split" in err.strip().splitlines()[-1] and not (tmp_path / "e" / "metrics.json").exists()


def test_sampled_evaluation_records_its_samples_and_new_products_join_the_catalogue(runs, run_cli, tmp_path) -> None:
    """The at-scale path on a small store (limits lowered): sampled queries, probe and k-means
    products recorded in metrics.json, the catalogue of every product indexed, the rebuilt index
    scoring the same sampled queries, and new products added to the catalogue index."""
    from scalemm.embedfile import load_embeddings, save_embeddings
    from scalemm.evaluate.index import load_index, search

    out = tmp_path / "eval"
    m = _evaluate(run_cli, runs, runs["scale"], out, "--max-queries", "12", "--max-sample", "40")
    smp = m["samples"]
    assert smp["retrieval_queries"]["used"] == 12 and smp["retrieval_queries"]["sampled"]
    assert smp["gallery"]["used"] == smp["gallery"]["of"] == m["evaluated_items"]  # the gallery is whole
    assert smp["probe_train"] == {"used": 40, "of": m["split"]["sizes"]["train"], "sampled": True}
    assert smp["kmeans"]["used"] == min(40, m["evaluated_items"]) and "minibatch" in smp["probe"]
    for sec, key in METHOD_KEYS.items():
        assert 0 <= m["methods"]["scale"][sec][key]["mean"] <= 1
    cat = m["catalogue"]
    assert cat["vectors"] == m["items"] == 160 and m["index"]["type"] == cat["type"]
    assert set(m["timings"]) == {"embedding_s", "catalogue_index_s", "scoring_s", "baselines_s", "paired_bootstrap_s"}
    # sampled: the paired bootstrap resamples the products some task scored
    assert m["paired_bootstrap"]["products"] <= m["evaluated_items"] and set(m["paired"]["concat_pca"]) == {
        "coarse", "fine", "classification"}
    rc, stdout, err, _ = run_cli("evaluate.py", "--out", str(out), "--rebuild-index")
    assert rc == 0, err
    assert last_json(stdout)["same_as_metrics_json"] is True
    # new products: another store's embeddings under new ids, added without a rebuild
    new_feats = tmp_path / "new"
    write_synthetic_store(new_feats, n_items=20, nuisance=1.5, noise=0.5, seed=11)
    rc, _, err, _ = run_cli("embed.py", "--run", str(runs["scale"] / "seed-0"), "--features", str(new_feats),
                            "--out", str(tmp_path / "new.npz"))
    assert rc == 0, err
    z = load_embeddings(tmp_path / "new.npz")
    ids = [f"new-{i}" for i in z["ids"]]
    save_embeddings(tmp_path / "other.npz", ids, z["vectors"], z["labels"], z["instances"])  # no checkpoint hash
    rc, _, err, _ = run_cli("evaluate.py", "--out", str(out), "--add-products", str(tmp_path / "other.npz"))
    assert rc == 2 and "error:" in err.strip().splitlines()[-1]  # refused: not known to be the catalogue's model
    save_embeddings(tmp_path / "new.npz", ids, z["vectors"], z["labels"], z["instances"],
                    weights_sha256=z["weights_sha256"], embedding_rule=z["embedding_rule"])
    rc, stdout, err, _ = run_cli("evaluate.py", "--out", str(out), "--add-products", str(tmp_path / "new.npz"))
    assert rc == 0, err
    assert last_json(stdout)["products"] == 180
    idx = load_index(out / "index" / "catalogue")
    _, rows = search(idx, z["vectors"], 1)
    assert [idx.ids[r] for r in rows[:, 0]] == ids
    rc, _, err, _ = run_cli("evaluate.py", "--out", str(out), "--add-products", str(tmp_path / "new.npz"))
    assert rc == 2 and "already in the index" in err.strip().splitlines()[-1]

