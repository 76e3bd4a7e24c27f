"""evaluate.tasks, evaluate.report and evaluate.headline on small synthetic embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalemm.evaluate.embeddings import EmbeddingSet, l2_normalize
from scalemm.evaluate.headline import format_headline
from scalemm.evaluate.metrics import CLASSIFICATION_KEYS, CLUSTERING_KEYS, RETRIEVAL_KEYS
from scalemm.evaluate.gallery import write_gallery
from scalemm.evaluate.markdown import render_markdown
from scalemm.evaluate.report import write_report
from scalemm.evaluate.schema import assemble_metrics, validate_metrics, write_metrics_json
from scalemm.evaluate.tasks import ABLATION_NAMES, evaluate_ablation, evaluate_methods, evaluate_set, index_report


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def make_set(n_cls: int = 6, per_cls: int = 20, dim: int = 16, noise: float = 0.3,
             seed: int = 0) -> EmbeddingSet:
    """Clustered products; items 2j and 2j+1 are listings of one instance (near duplicates)."""
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(n_cls, dim))
    n = n_cls * per_cls
    y = np.repeat(np.arange(n_cls), per_cls)
    base = cent[y] + noise * rng.normal(size=(n, dim))
    base[1::2] = base[0::2] + 0.01 * rng.normal(size=(n // 2, dim))
    inst = [f"i{i // 2}" if i < n - 10 else "" for i in range(n)]
    return EmbeddingSet([f"p{i}" for i in range(n)], l2_normalize(base), [f"c{c}" for c in y], inst)


def _check_unit_dict(d: dict, keys) -> None:
    assert list(d) == list(keys)
    assert all(0.0 <= v <= 1.0 for v in d.values())


def test_evaluate_set(tmp_path: Path) -> None:
    es = make_set()
    out = evaluate_set(es, index_dir=tmp_path / "idx", seed=0)
    assert list(out) == ["coarse", "fine", "classification", "clustering"]
    _check_unit_dict(out["coarse"], RETRIEVAL_KEYS)
    _check_unit_dict(out["fine"], RETRIEVAL_KEYS)
    _check_unit_dict(out["classification"], CLASSIFICATION_KEYS)
    _check_unit_dict(out["clustering"], CLUSTERING_KEYS)
    assert out["coarse"]["mAP@1"] > 0.9 and out["fine"]["mAP@1"] > 0.9
    assert out["fine"]["Prec@10"] <= 0.1 + 1e-9  # one other listing per instance
    assert (tmp_path / "idx" / "index.faiss").is_file()
    # random vectors: retrieval near chance
    rnd = EmbeddingSet(es.ids, l2_normalize(np.random.default_rng(1).normal(size=es.vectors.shape)),
                       es.labels, es.instances)
    assert evaluate_set(rnd)["coarse"]["mAP@1"] < 0.5


def test_evaluate_set_approximate_ranking_agrees() -> None:
    es = make_set()
    exact = evaluate_set(es)
    approx = evaluate_set(es, exact_threshold=10)  # forces HNSW for the ranking
    assert approx["coarse"]["mAP@1"] == pytest.approx(exact["coarse"]["mAP@1"], abs=0.05)


def test_evaluate_methods_ablation_and_index_report() -> None:
    a, b = make_set(seed=0), make_set(seed=0, noise=2.0)
    res = evaluate_methods({"scale": a, "frozen_text": b})
    assert list(res) == ["methods"] and list(res["methods"]) == ["scale", "frozen_text"]
    assert res["methods"]["scale"]["coarse"]["Prec@10"] > res["methods"]["frozen_text"]["coarse"]["Prec@10"]
    abl = evaluate_ablation({name: a for name in ABLATION_NAMES})
    assert list(abl) == list(ABLATION_NAMES)
    assert all(list(v) == ["coarse", "fine"] for v in abl.values())
    rep = index_report(a)
    assert list(rep) == ["type", "ann_recall@10"]
    assert rep["type"] == "hnsw" and rep["ann_recall@10"] >= 0.95


# ----------------------------------------------------------------------------- report

def _fake_metrics() -> dict:
    r = {k: 0.5 for k in RETRIEVAL_KEYS}
    method = {"coarse": dict(r), "fine": dict(r), "classification": {"accuracy": 0.7, "macro_f1": 0.6},
              "clustering": {"nmi": 0.8, "purity": 0.75}}
    return assemble_metrics({"methods": {"scale": method, "concat_frozen": json.loads(json.dumps(method))}},
                            {name: {"coarse": dict(r), "fine": dict(r)} for name in ABLATION_NAMES},
                            {"type": "hnsw", "ann_recall@10": 0.99},
                            cross_modal={"scale": {"R@1": 0.4, "R@5": 0.7, "R@10": 0.8}})


def test_validate_metrics_catches_schema_errors(tmp_path: Path) -> None:
    good = _fake_metrics()
    assert validate_metrics(good) == []
    bad = json.loads(json.dumps(good))
    bad["methods"]["scale"]["coarse"]["mAP@1"] = 1.5
    del bad["methods"]["scale"]["clustering"]["purity"]
    bad["ablation"].pop("text")
    del bad["index"]["ann_recall@10"]
    problems = validate_metrics(bad)
    assert len(problems) == 4, problems
    with pytest.raises(ValueError, match="schema"):
        write_metrics_json(bad, tmp_path / "m.json")
    assert validate_metrics({"methods": {}}) == ["missing top-level key 'ablation'",
                                                 "missing top-level key 'index'"]


def _images(tmp_path: Path, es: EmbeddingSet) -> dict[str, dict]:
    info = {}
    for i, pid in enumerate(es.ids):
        path = None
        if i % 5:  # every fifth product has no image
            path = tmp_path / "img" / f"{pid}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (40, 30), (i * 2 % 255, 100, 150)).save(path)
        info[pid] = {"title": f"Product <{pid}> & co", "image": str(path) if path else None}
    return info


def test_write_report_files_and_schema(tmp_path: Path) -> None:
    metrics = _fake_metrics()
    log_path = tmp_path / "train.jsonl"
    rows = [{"step": s, "epoch": s // 5, "loss": 2.0 / (s + 1), "loss_simcl": 1.0 / (s + 1),
             "loss_mask_text": 0.5, "importance_text": 0.3, "importance_image": 0.2} for s in range(10)]
    log_path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\nnot json\n")
    es = make_set(per_cls=6)
    rng = np.random.default_rng(0)
    importance = rng.random((len(es), 5))
    importance[:3, 4] = np.nan  # missing audio
    out = tmp_path / "report"
    files = write_report(out, metrics, training_log=log_path, importance=importance,
                         importance_labels=es.labels, gallery_set=es,
                         product_info=_images(tmp_path, es))
    for name in ("metrics.json", "report.md", "ablation.png", "methods.png",
                 "training_curves.png", "importances.png", "gallery.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert files[name] == out / name
    for png in ("ablation.png", "methods.png", "training_curves.png", "importances.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"methods", "ablation", "index", "cross_modal"}
    assert set(m["methods"]) == {"scale", "concat_frozen"}
    for meth in m["methods"].values():
        assert set(meth) == {"coarse", "fine", "classification", "clustering"}
        assert set(meth["coarse"]) == set(meth["fine"]) == set(RETRIEVAL_KEYS)
        assert set(meth["classification"]) == {"accuracy", "macro_f1"}
        assert set(meth["clustering"]) == {"nmi", "purity"}
    assert set(m["ablation"]) == {"text", "text+image", "text+image+table",
                                  "text+image+table+video", "text+image+table+video+audio"}
    assert all(set(v) == {"coarse", "fine"} for v in m["ablation"].values())
    assert set(m["index"]) == {"type", "ann_recall@10"}

    md = (out / "report.md").read_text()
    for s in ("scale", "concat_frozen", "text+image+table", "hnsw", "99.00", "![modality ablation](ablation.png)",
              "training_curves.png", "importances.png", "gallery.html", "cross_modal"):
        assert s in md, s

    page = (out / "gallery.html").read_text()
    assert page.count('class="row"') == 12
    assert "data:image/jpeg;base64," in page and "no image" in page
    assert "&lt;p" in page and "<p0>" not in page  # titles are escaped
    assert 'src="/' not in page and "file:" not in page  # self-contained
    assert page.count("card hit") + page.count("card miss") == 12 * 10


def test_gallery_marks_hits(tmp_path: Path) -> None:
    es = make_set(n_cls=3, per_cls=6)
    info = {pid: {"title": pid, "image": None} for pid in es.ids}
    n = len(es)
    nb = np.tile(np.arange(n), (n, 1))  # every query ranks items 0..n-1, itself included
    path = write_gallery(es, info, tmp_path / "g.html", n_queries=3, k=4, neighbors=nb)
    page = path.read_text()
    assert page.count('class="row"') == 3
    assert page.count("card hit") + page.count("card miss") == 3 * 4


def test_render_markdown_and_headline() -> None:
    metrics = _fake_metrics()
    md = render_markdown(metrics)
    assert "| scale | 50.00 |" in md
    text = format_headline(metrics)
    lines = text.splitlines()
    assert lines[0].split() == ["method", "coarse", "mAP@1", "fine", "mAP@1", "accuracy", "NMI"]
    assert lines[2].split() == ["scale", "50.00", "50.00", "70.00", "80.00"]
    assert "concat_frozen" in text and "recall@10" in lines[-1]
    assert format_headline(metrics["methods"]).splitlines()[2].startswith("scale")


def test_importance_plot_of_a_category_without_a_modality_warns_nothing(tmp_path: Path) -> None:
    """A category none of whose products has, say, a video is a blank heatmap cell, not a
    'Mean of empty slice' warning on the user's console."""
    import warnings

    from scalemm.evaluate.plots import plot_importances
    imp = np.random.default_rng(0).random((6, 5))
    imp[:3, 3] = np.nan  # category "a": no video
    labels = ["a"] * 3 + ["b"] * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plot_importances(imp, labels, tmp_path / "imp.png")
    assert out.is_file() and Image.open(out).size[0] > 100


def test_paired_intervals_in_the_report_headline_plot_and_schema(tmp_path: Path) -> None:
    metrics = _fake_metrics()
    metrics["embedding_dim"] = 384
    metrics["dims"] = {"scale": 384, "concat_frozen": 3408}
    metrics["paired"] = {"concat_frozen": {"coarse": {"diff": 0.05, "lo": 0.01, "hi": 0.09},
                                           "fine": {"diff": 0.02, "lo": -0.01, "hi": 0.05},
                                           "classification": {"diff": -0.03, "lo": -0.06, "hi": -0.005}}}
    metrics["paired_bootstrap"] = {"resamples": 1000, "level": 0.95, "products": 120}
    metrics["baselines"] = {"concat_weighted": {"weights": {"text": 1.0, "image": 0.5}, "val_products": 50,
                                                "chosen_on_reported_split": True, "rule": "greedy"}}
    assert validate_metrics(metrics) == []
    md = render_markdown(metrics)
    assert "384 floats" in md and "## Paired comparison" in md
    assert "| concat_frozen | 3408 | **+5.00 [+1.00, +9.00]** | +2.00 [-1.00, +5.00] | **-3.00 [-6.00, -0.50]** |" in md
    assert "chosen on the split reported here" in md
    text = format_headline(metrics)
    assert "scale embedding: 384 floats" in text and "concat_frozen: +5.0 [+1.0, +9.0]" in text
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["method", "dims"] and lines[2].split()[:2] == ["scale", "384"]
    files = write_report(tmp_path / "r", metrics)
    assert (tmp_path / "r" / "paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "paired.png" in files
    bad = json.loads(json.dumps(metrics))
    bad["paired"]["concat_frozen"]["fine"] = {"diff": 1.5, "lo": 0.0}
    assert any("paired.concat_frozen.fine" in p for p in validate_metrics(bad))
