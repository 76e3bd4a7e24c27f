"""The fair baselines (evaluate/baselines.py) against independent numpy computations, and the
model specs of pipelines/evaluate.py --model NAME=RUN (evaluate/models.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scalemm.evaluate.baselines import (choose_weights, concat_pca, concat_text_image, concat_weighted,
                                        nearest_neighbour_score)
from scalemm.evaluate.embeddings import EmbeddingSet
from scalemm.errors import ConfigError
from scalemm.evaluate.models import ModelSpecError, embedding_changes, model_runs, parse_model_spec
from scalemm.evaluate.protocol import SplitView
from scalemm.splits import SplitSpec

MODS = ("image", "text", "table", "video", "audio")


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0.0)


def _frozen(n: int = 60, seed: int = 0, informative: tuple[str, ...] = ("text", "image"),
            n_classes: int = 4) -> dict[str, EmbeddingSet]:
    """frozen_<m> sets of n products (two listings per instance); the ``informative`` modalities
    carry the instance (and so the class), the others are noise; a few vectors absent (zero)."""
    rng = np.random.default_rng(seed)
    inst = np.repeat(np.arange(n // 2), 2)
    cls = inst % n_classes
    protos = rng.normal(size=(n_classes, 12)) * 2
    lat = protos[cls] + rng.normal(size=(n // 2, 12))[inst]
    ids = [f"p{i}" for i in range(n)]
    labels = [f"c{c}" for c in cls]
    instances = [f"i{j}" for j in inst]
    out = {}
    for j, m in enumerate(MODS):
        d = 8 + 4 * j
        if m in informative:
            x = lat @ rng.normal(size=(12, d)) + 0.3 * rng.normal(size=(n, d))
        else:
            x = rng.normal(size=(n, d))
        x[rng.random(n) < 0.1] = 0.0
        out[f"frozen_{m}"] = EmbeddingSet(ids, _normalize(x).astype(np.float32), labels, instances)
    return out


def test_concat_text_image_is_the_normalised_concatenation() -> None:
    fr = _frozen()
    got = concat_text_image(fr)
    t, i = fr["frozen_text"].vectors.astype(np.float64), fr["frozen_image"].vectors.astype(np.float64)
    want = _normalize(np.concatenate([t, i], axis=1))
    assert got.ids == fr["frozen_text"].ids and got.dim == t.shape[1] + i.shape[1]
    assert np.allclose(got.vectors, want, atol=1e-6)
    # a product with both: the two halves weigh the same
    both = (np.abs(t).sum(1) > 0) & (np.abs(i).sum(1) > 0)
    halves = np.linalg.norm(got.vectors[both, :t.shape[1]], axis=1), np.linalg.norm(got.vectors[both, t.shape[1]:], axis=1)
    assert np.allclose(halves[0], halves[1], atol=1e-6)
    assert concat_text_image({k: v for k, v in fr.items() if k != "frozen_image"}) is None


def test_concat_weighted_is_the_weighted_normalised_concatenation() -> None:
    fr = _frozen()
    w = {"image": 0.5, "text": 1.0, "table": 0.25, "video": 0.0, "audio": 1.0}
    got = concat_weighted(fr, w)
    want = _normalize(np.concatenate([w[m] * fr[f"frozen_{m}"].vectors.astype(np.float64) for m in MODS], axis=1))
    assert np.allclose(got.vectors @ got.vectors.T, want @ want.T, atol=1e-6)  # the same similarities
    # a weight-0 modality's columns are left out, not carried as zeros
    assert got.dim == sum(fr[f"frozen_{m}"].dim for m in MODS if w[m] > 0)
    equal = concat_weighted(fr, dict.fromkeys(MODS, 1.0))
    from scalemm.evaluate.embeddings import l2_normalize
    assert np.allclose(equal.vectors, l2_normalize(np.concatenate([fr[f"frozen_{m}"].vectors for m in MODS], 1)))


def test_concat_pca_is_fitted_on_the_train_rows_only() -> None:
    fr = _frozen(80)
    train = np.arange(0, 80, 2)  # the even rows are the train products
    width = 16
    got, info = concat_pca(fr, train, width)
    assert got.dim == width and info["components"] == width and info["fitted_on_products"] == 40
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    # independent numpy: centre on the train rows' mean, project on their top right singular vectors
    full = np.concatenate([fr[f"frozen_{m}"].vectors for m in MODS], axis=1).astype(np.float64)
    mu = full[train].mean(0)
    _, _, vt = np.linalg.svd(full[train] - mu, full_matrices=False)
    want = _normalize((full - mu) @ vt[:width].T)
    assert np.allclose(got.vectors @ got.vectors.T, want @ want.T, atol=1e-4)  # equal up to each axis' sign

    def changed(rows: np.ndarray) -> dict[str, EmbeddingSet]:
        out = {}
        for k, e in fr.items():
            v = e.vectors.copy()
            v[rows] = _normalize(np.random.default_rng(9).normal(size=(len(rows), v.shape[1]))).astype(np.float32)
            out[k] = EmbeddingSet(e.ids, v, e.labels, e.instances)
        return out

    test_rows = np.arange(1, 80, 2)
    other_test, _ = concat_pca(changed(test_rows[:10]), train, width)
    assert np.allclose(other_test.vectors[train], got.vectors[train], atol=1e-6)  # same fit: test rows unseen
    other_train, _ = concat_pca(changed(train[:10]), train, width)
    assert not np.allclose(np.abs(other_train.vectors[test_rows]), np.abs(got.vectors[test_rows]), atol=1e-3)
    # fewer train products than the width: as many components as they span (5 centred products: 4);
    # a fifth would have no variance on them, and the probe's standardiser would blow its noise up
    few, finfo = concat_pca(fr, train[:5], width)
    assert few.dim == finfo["components"] == 4
    # a sample of the train products when there are many: still train rows only
    capped, cinfo = concat_pca(fr, train, width, max_fit=30)
    assert cinfo["fitted_on_products"] == 30 and cinfo["train_products"] == 40
    capped_t, _ = concat_pca(changed(test_rows[:10]), train, width, max_fit=30)
    assert np.allclose(capped_t.vectors[train], capped.vectors[train], atol=1e-6)


def test_the_val_score_matches_the_evaluation_scoring() -> None:
    from scalemm.evaluate.tasks import evaluate_retrieval

    fr = _frozen(50, seed=3)
    w = {"image": 0.5, "text": 1.0, "table": 0.25, "video": 0.0, "audio": 1.0}
    ref = concat_weighted(fr, w)
    x = [fr[f"frozen_{m}"].vectors.astype(np.float64) for m in MODS]
    grams = np.stack([v @ v.T for v in x])
    present = np.stack([np.abs(v).sum(1) > 0 for v in x], 1).astype(float)
    got = nearest_neighbour_score(grams, present, np.array([w[m] for m in MODS]), ref.labels, ref.instances)
    want = evaluate_retrieval(ref)
    assert got["coarse"] == pytest.approx(want["coarse"]["mAP@1"]) and got["fine"] == pytest.approx(want["fine"]["mAP@1"])


def test_concat_weighted_chooses_its_weights_on_validation_only() -> None:
    from scalemm.evaluate.baselines import fair_baselines

    n = 90
    fr = _frozen(n, seed=1, informative=("text",))
    names = np.array(["train", "val", "test"])[np.arange(n) // 2 % 3]  # whole instances per split
    view = SplitView(SplitSpec(0), names, "test", np.flatnonzero(names == "train"), np.flatnonzero(names == "test"))

    def run(sets: dict[str, EmbeddingSet]) -> dict:
        from scalemm.evaluate.budget import EvalBudget, Samples

        local = Samples.draw(view.eval_rows, view.train_rows, EvalBudget(), 0)
        return fair_baselines(Path("."), sets, view, None, local, 8, 0)

    sets, info = run(fr)
    wi = info["concat_weighted"]
    assert wi["chosen_on"] == "val" and wi["chosen_on_reported_split"] is False
    assert wi["val_products"] == int((names == "val").sum())
    assert wi["weights"]["text"] == 1.0 and max(wi["weights"][m] for m in MODS if m != "text") < 1.0  # noise down-weighted
    assert wi["val_score"]["coarse"] + wi["val_score"]["fine"] >= (
        wi["equal_weights_val_score"]["coarse"] + wi["equal_weights_val_score"]["fine"])
    assert np.allclose(sets["concat_weighted"].vectors, concat_weighted(fr, wi["weights"]).vectors)
    assert set(sets) == {"concat_text_image", "concat_weighted", "concat_pca"}

    def swap(rows: np.ndarray) -> dict[str, EmbeddingSet]:  # image made informative, text noise, on these rows
        out = dict(fr)
        t, i = fr["frozen_text"], fr["frozen_image"]
        tv, iv = t.vectors.copy(), i.vectors.copy()
        d = min(tv.shape[1], iv.shape[1])
        iv[rows] = 0.0
        iv[rows, :d] = t.vectors[rows, :d]  # the title's signal moves to the image
        tv[rows] = _normalize(np.random.default_rng(2).normal(size=(len(rows), tv.shape[1])))
        out["frozen_text"] = EmbeddingSet(t.ids, tv, t.labels, t.instances)
        out["frozen_image"] = EmbeddingSet(i.ids, _normalize(iv).astype(np.float32), i.labels, i.instances)
        return out

    # changing the test products (or the train products) leaves the weights; changing validation moves them
    assert run(swap(np.flatnonzero(names == "test")))[1]["concat_weighted"]["weights"] == wi["weights"]
    assert run(swap(np.flatnonzero(names == "train")))[1]["concat_weighted"]["weights"] == wi["weights"]
    assert run(swap(np.flatnonzero(names == "val")))[1]["concat_weighted"]["weights"] != wi["weights"]
    # evaluating on val: the weights are chosen on what is reported, and it says so
    on_val = SplitView(SplitSpec(0), names, "val", view.train_rows, np.flatnonzero(names == "val"))
    from scalemm.evaluate.budget import EvalBudget, Samples
    info_val = fair_baselines(Path("."), fr, on_val, None, Samples.draw(on_val.eval_rows, on_val.train_rows,
                                                                          EvalBudget(), 0), 8, 0)[1]
    assert info_val["concat_weighted"]["chosen_on_reported_split"] is True


def test_choose_weights_never_scores_below_equal_weights_and_keeps_a_weight_on_ties() -> None:
    fr = _frozen(40, seed=5)
    got = choose_weights(fr)
    assert set(got["weights"]) == set(MODS) and all(w in (0.0, 0.25, 0.5, 1.0) for w in got["weights"].values())
    same = {k: EmbeddingSet(v.ids, v.vectors, v.labels, v.instances) for k, v in fr.items()}
    assert choose_weights(same)["weights"] == got["weights"]  # deterministic


def test_the_untrained_model_is_the_training_initialisation() -> None:
    import torch

    from fuse_helpers import SMALL_SHAPES, tiny_config
    from scalemm.fuse.embedder import Embedder
    from scalemm.fuse.model import ScaleModel
    from scalemm.fuse.step import build_learner

    def trained(cfg):  # a trained model of this config (its weights do not matter here)
        return Embedder(ScaleModel(cfg, SMALL_SHAPES), cfg, {}, Path("trained.safetensors"), 100, torch.device("cpu"))

    cfg = tiny_config(seed=7)
    like = trained(cfg)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    blank = Embedder.untrained(like).model
    assert torch.equal(torch.rand(1), before)  # the global RNG is left as it was
    learner = build_learner(cfg, SMALL_SHAPES, torch.device("cpu"))
    want = learner.model.state_dict()
    got = blank.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert not blank.training
    other = Embedder.untrained(trained(cfg.replace(seed=8))).model.state_dict()
    assert any(not torch.equal(other[k], want[k]) for k in want if want[k].is_floating_point())


# ----------------------------------------------------------------------------- --model NAME=RUN

def test_model_specs_parse_and_order() -> None:
    assert parse_model_spec("scale_paper=runs/paper") == ("scale_paper", "runs/paper")
    assert parse_model_spec("a=b=c") == ("a", "b=c")  # the run may hold '='
    got = model_runs("runs/s", None, ["scale_paper=runs/p", "scale_uniform=runs/u"])
    assert list(got) == ["scale", "scale_uniform", "scale_paper"] and got["scale_paper"] == Path("runs/p")
    assert list(model_runs(None, "runs/u", ["scale=runs/s"])) == ["scale", "scale_uniform"]
    assert list(model_runs("runs/s")) == ["scale"]


@pytest.mark.parametrize("args, words", [
    (("runs/s", None, ["scale=runs/t"]), ["'scale' is given twice", "--checkpoint"]),
    ((None, "runs/u", ["scale=x", "scale_uniform=y"]), ["'scale_uniform' is given twice", "--uniform-checkpoint"]),
    (("runs/s", None, ["p=a", "p=b"]), ["'p' is given twice"]),
    (("runs/s", None, ["scale_paper"]), ["expected NAME=RUN"]),
    (("runs/s", None, ["=runs/p"]), ["both parts non-empty"]),
    (("runs/s", None, ["p="]), ["both parts non-empty"]),
    (("runs/s", None, ["1x=runs/p"]), ["must start with a letter"]),
    (("runs/s", None, ["concat_pca=runs/p"]), ["baseline"]),
    (("runs/s", None, ["frozen_text=runs/p"]), ["baseline"]),
    (("runs/s", None, ["scale_untrained=runs/p"]), ["baseline"]),
    ((None, None, ["scale_paper=runs/p"]), ["no default model", "--checkpoint"]),
])
def test_bad_model_specs_are_refused_with_a_clear_error(args, words) -> None:
    with pytest.raises(ModelSpecError) as e:
        model_runs(*args)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_embedding_changes_parse_per_model() -> None:
    names = ["scale", "scale_sum", "scale_paper"]
    got = embedding_changes(["scale_sum:modality_heads=[]", "scale_paper:modality_heads=text",
                             "scale_paper:identification_power=0.5", "scale_sum:weighting=sum"], names)
    assert got == {"scale_sum": {"modality_heads": [], "weighting": "sum"},
                   "scale_paper": {"modality_heads": ["text"], "identification_power": 0.5}}
    assert embedding_changes(["scale_sum:modality_heads="], names) == {"scale_sum": {"modality_heads": []}}
    assert embedding_changes([], names) == {}


@pytest.mark.parametrize("spec, words", [
    ("scale:modality_heads=[]", ["default model 'scale'", "--model scale_sum=RUN"]),
    ("nobody:modality_heads=[]", ["no model named 'nobody'"]),
    ("scale_sum", ["expected NAME:KEY=VALUE"]),
    ("scale_sum:heads=[]", ["expected KEY=VALUE", "modality_heads"]),
    ("scale_sum:identification_power=high", ["identification_power", "float"]),
    ("scale_sum:modality_heads=[", ["not YAML"]),
])
def test_bad_embedding_changes_are_refused_with_a_clear_error(spec, words) -> None:
    with pytest.raises(ConfigError) as e:
        embedding_changes([spec], ["scale", "scale_sum"])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_the_command_line_refuses_a_duplicate_model(run_cli, tmp_path) -> None:
    rc, _, err, _ = run_cli("evaluate.py", "--features", str(tmp_path), "--checkpoint", str(tmp_path / "a"),
                            "--model", f"scale={tmp_path / 'b'}", "--out", str(tmp_path / "e"))
    assert rc == 2 and "Traceback" not in err and "given twice" in err.strip().splitlines()[-1]
    rc, _, err, _ = run_cli("evaluate.py", "--features", str(tmp_path), "--model", "paper",
                            "--checkpoint", str(tmp_path / "a"), "--out", str(tmp_path / "e"))
    assert rc == 2 and "expected NAME=RUN" in err.strip().splitlines()[-1]
    assert not (tmp_path / "e").exists()


def test_the_command_line_refuses_an_embedding_change_of_the_default_model(run_cli, tmp_path) -> None:
    rc, _, err, _ = run_cli("evaluate.py", "--features", str(tmp_path), "--checkpoint", str(tmp_path / "a"),
                            "--embedding", "scale:modality_heads=[]", "--out", str(tmp_path / "e"))
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err and "default model 'scale'" in last and "--model scale_sum=RUN" in last
    assert not (tmp_path / "e").exists()  # refused before anything is written
