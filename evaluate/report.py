"""Evaluation outputs: ``metrics.json`` (fixed schema), ``report.md``, plots and an HTML gallery.

``metrics.json`` schema (all values floats in [0, 1] except ``index.type``)::

    {"methods":  {NAME: {"coarse": {mAP@1, mAP@5, mAP@10, Prec@1, Prec@5, Prec@10},
                         "fine":   {same keys},
                         "classification": {accuracy, macro_f1},
                         "clustering": {nmi, purity}}},
     "ablation": {"text" | "text+image" | ... | "text+image+table+video+audio":
                      {"coarse": {...}, "fine": {...}}},
     "index":    {"type": str, "ann_recall@10": float},
     ...optional extra top-level keys (e.g. "cross_modal")}

Plots are drawn with matplotlib's Agg canvas (``matplotlib.figure.Figure``, no pyplot
state): ``ablation.png``, ``methods.png``, ``training_curves.png``, ``importances.png``.
``gallery.html`` is self-contained (thumbnails embedded as base64 JPEG).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from scalemm.evaluate.metrics import CLASSIFICATION_KEYS, CLUSTERING_KEYS, RETRIEVAL_KEYS

log = logging.getLogger(__name__)

MODALITY_ORDER: tuple[str, ...] = ("image", "text", "table", "video", "audio")
ABLATION_KEYS: tuple[str, ...] = ("text", "text+image", "text+image+table",
                                  "text+image+table+video", "text+image+table+video+audio")
METHOD_SECTIONS: dict[str, tuple[str, ...]] = {
    "coarse": RETRIEVAL_KEYS, "fine": RETRIEVAL_KEYS,
    "classification": CLASSIFICATION_KEYS, "clustering": CLUSTERING_KEYS,
}
ABLATION_SECTIONS: dict[str, tuple[str, ...]] = {"coarse": RETRIEVAL_KEYS, "fine": RETRIEVAL_KEYS}
INDEX_KEYS: tuple[str, ...] = ("type", "ann_recall@10")
REQUIRED_TOP: tuple[str, ...] = ("methods", "ablation", "index")


# ----------------------------------------------------------------------------- metrics.json

def _num(v: Any) -> Any:
    """A figure as a number: the mean of a ``{"mean", "std"}`` figure (averaged over seeds)."""
    return v["mean"] if isinstance(v, Mapping) and "mean" in v else v


def _check_unit(v: Any, where: str, problems: list[str]) -> None:
    if isinstance(v, Mapping) and set(v) >= {"mean", "std"}:
        std = v["std"]
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std >= 0:
            problems.append(f"{where}.std = {std!r} is not a number >= 0")
        v = v["mean"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not 0.0 <= v <= 1.0:
        problems.append(f"{where} = {v!r} is not a number in [0, 1]")


def _check_sections(d: Any, sections: Mapping[str, Sequence[str]], where: str,
                    problems: list[str]) -> None:
    if not isinstance(d, Mapping):
        problems.append(f"{where} is not an object")
        return
    if set(d) != set(sections):
        problems.append(f"{where} has keys {sorted(d)}, expected {sorted(sections)}")
    for sec, keys in sections.items():
        sub = d.get(sec)
        if not isinstance(sub, Mapping):
            continue
        if set(sub) != set(keys):
            problems.append(f"{where}.{sec} has keys {sorted(sub)}, expected {sorted(keys)}")
        for k in keys:
            if k in sub:
                _check_unit(sub[k], f"{where}.{sec}.{k}", problems)


def validate_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """Every way ``metrics`` departs from the metrics.json schema (empty list: valid)."""
    problems: list[str] = []
    for key in REQUIRED_TOP:
        if key not in metrics:
            problems.append(f"missing top-level key '{key}'")
    methods = metrics.get("methods", {})
    if not isinstance(methods, Mapping):
        problems.append("methods is not an object")
    else:
        for name, m in methods.items():
            _check_sections(m, METHOD_SECTIONS, f"methods.{name}", problems)
    ablation = metrics.get("ablation", {})
    if not isinstance(ablation, Mapping):
        problems.append("ablation is not an object")
    else:
        if "ablation" in metrics and set(ablation) != set(ABLATION_KEYS):
            problems.append(f"ablation has keys {sorted(ablation)}, expected {list(ABLATION_KEYS)}")
        for name, m in ablation.items():
            _check_sections(m, ABLATION_SECTIONS, f"ablation.{name}", problems)
    index = metrics.get("index", {})
    if not isinstance(index, Mapping):
        problems.append("index is not an object")
    elif "index" in metrics:
        if set(index) != set(INDEX_KEYS):
            problems.append(f"index has keys {sorted(index)}, expected {list(INDEX_KEYS)}")
        if not isinstance(index.get("type"), str):
            problems.append("index.type is not a string")
        if "ann_recall@10" in index:
            _check_unit(index["ann_recall@10"], "index.ann_recall@10", problems)
    return problems


def assemble_metrics(methods: Mapping[str, Any], ablation: Mapping[str, Any],
                     index: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The metrics.json object: ``methods`` (the inner dict or ``{"methods": ...}``),
    ``ablation``, ``index`` and any extra top-level entries (e.g. ``cross_modal=...``)."""
    inner = methods["methods"] if set(methods) == {"methods"} else methods
    out: dict[str, Any] = {"methods": dict(inner), "ablation": dict(ablation), "index": dict(index)}
    for k, v in extra.items():
        if k in out:
            raise ValueError(f"extra key '{k}' would overwrite a schema key")
        out[k] = v
    return out


def _plain(obj: Any) -> Any:
    """JSON-safe copy (numpy scalars to Python numbers)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def write_metrics_json(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Validate against the schema, then write (sorted keys, atomically)."""
    plain = _plain(metrics)
    problems = validate_metrics(plain)
    if problems:
        raise ValueError("metrics do not fit the metrics.json schema: " + "; ".join(problems))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(plain, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- plots

def _figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _grouped_bars(ax: Any, groups: Sequence[str], series: Mapping[str, Sequence[float]]) -> None:
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for j, (name, vals) in enumerate(series.items()):
        ax.bar(x + (j - (len(series) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_ablation(ablation: Mapping[str, Any], path: str | Path) -> Path:
    """Bar chart of coarse and fine mAP@1 per modality subset."""
    names = [n for n in ABLATION_KEYS if n in ablation] + [n for n in ablation if n not in ABLATION_KEYS]
    fig = _figure((7, 4))
    ax = fig.subplots()
    _grouped_bars(ax, names, {
        "coarse mAP@1": [_num(ablation[n]["coarse"]["mAP@1"]) for n in names],
        "fine mAP@1": [_num(ablation[n]["fine"]["mAP@1"]) for n in names],
    })
    ax.set_title("Modality ablation")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_methods(methods: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars per method: coarse / fine mAP@1, classification accuracy, NMI."""
    names = list(methods)
    fig = _figure((max(6, 1.1 * len(names) + 3), 4))
    ax = fig.subplots()
    _grouped_bars(ax, names, {
        "coarse mAP@1": [_num(methods[n]["coarse"]["mAP@1"]) for n in names],
        "fine mAP@1": [_num(methods[n]["fine"]["mAP@1"]) for n in names],
        "accuracy": [_num(methods[n]["classification"]["accuracy"]) for n in names],
        "NMI": [_num(methods[n]["clustering"]["nmi"]) for n in names],
    })
    ax.set_title("Methods")
    fig.savefig(path, dpi=110)
    return Path(path)


def read_training_log(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL training log (blank and unparsable lines are skipped with a warning)."""
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            log.warning("%s line %d is not JSON (%s); skipped", path, n, e)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def plot_training_curves(log_path: str | Path, path: str | Path) -> Path:
    """Loss curves (every ``loss*`` key) and modality importances (``importance_*``) vs step."""
    rows = read_training_log(log_path)
    keys = sorted({k for r in rows for k in r})
    loss_keys = [k for k in keys if k.startswith("loss")]
    imp_keys = [k for k in keys if k.startswith("importance_")]
    fig = _figure((10, 4))
    ax_l, ax_i = fig.subplots(1, 2)
    for ax, ks, title in ((ax_l, loss_keys, "losses"), (ax_i, imp_keys, "modality importance")):
        for k in ks:
            pts = [(r.get("step", i), r[k]) for i, r in enumerate(rows)
                   if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=k.removeprefix("importance_"),
                        lw=2 if k == "loss" else 1)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ks:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_importances(importance: np.ndarray, labels: Sequence[str], path: str | Path, *,
                     modalities: Sequence[str] = MODALITY_ORDER, max_categories: int = 30) -> Path:
    """Learned modality importances: overall mean (bar) and per-category mean (heatmap).

    ``importance`` is [N, M] (M = len(modalities)); NaN marks a missing modality and is left
    out of the means. The heatmap shows the ``max_categories`` most frequent categories.
    """
    imp = np.asarray(importance, dtype=np.float64)
    if imp.ndim != 2 or imp.shape[1] != len(modalities) or imp.shape[0] != len(labels):
        raise ValueError(f"importance must be [N={len(labels)}, {len(modalities)}], got {imp.shape}")
    with np.errstate(all="ignore"):
        overall = np.nanmean(imp, axis=0) if len(imp) else np.zeros(len(modalities))
    lab = np.asarray(list(labels), dtype=object)
    uniq, counts = np.unique(lab.astype(str), return_counts=True) if len(lab) else ([], [])
    cats = [c for _, c in sorted(zip(-np.asarray(counts), uniq))][:max_categories]
    heat = np.full((len(cats), len(modalities)), np.nan)
    for r, c in enumerate(cats):
        with np.errstate(all="ignore"):
            heat[r] = np.nanmean(imp[lab == c], axis=0)
    fig = _figure((11, max(3.5, 0.28 * len(cats) + 1.5)))
    ax_b, ax_h = fig.subplots(1, 2, width_ratios=[1, 1.4])
    ax_b.bar(list(modalities), np.nan_to_num(overall))
    ax_b.set_title("mean importance (all products)")
    ax_b.grid(axis="y", alpha=0.3)
    im = ax_h.imshow(np.ma.masked_invalid(heat) if len(cats) else np.zeros((1, len(modalities))),
                     aspect="auto", cmap="viridis")
    ax_h.set_xticks(range(len(modalities)), list(modalities))
    ax_h.set_yticks(range(len(cats)), [str(c)[:30] for c in cats], fontsize=7)
    ax_h.set_title("mean importance per category")
    fig.colorbar(im, ax=ax_h)
    fig.savefig(path, dpi=110)
    return Path(path)


# ----------------------------------------------------------------------------- gallery

def thumbnail_data_uri(image_path: str | Path | None, size: int = 128) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail, or None if there is no readable image."""
    if not image_path:
        return None
    try:
        from PIL import Image

        with Image.open(image_path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError) as e:
        log.debug("no thumbnail for %s: %s", image_path, e)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_GALLERY_CSS = """
body{font-family:sans-serif;margin:1em;background:#fafafa}
.row{display:flex;gap:8px;align-items:flex-start;margin-bottom:18px;border-bottom:1px solid #ddd;padding-bottom:10px}
.card{width:140px;font-size:11px;background:#fff;padding:4px;border:3px solid #ccc;border-radius:4px}
.card.query{border-color:#336;background:#eef}
.card.hit{border-color:#2a2}.card.miss{border-color:#c22}
.thumb{width:128px;height:128px;object-fit:contain;display:block;margin:auto;background:#eee}
.noimg{width:128px;height:128px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
.title{max-height:4.2em;overflow:hidden}
.ok{color:#2a2;font-weight:bold}.no{color:#c22;font-weight:bold}.na{color:#888}
"""


def _card(pid: str, info: Mapping[str, Any], thumbs: dict[str, str | None], classes: str,
          marks: str, size: int) -> str:
    if pid not in thumbs:
        thumbs[pid] = thumbnail_data_uri(info.get("image"), size)
    uri = thumbs[pid]
    img = (f'<img class="thumb" src="{uri}" alt="">' if uri else '<div class="noimg">no image</div>')
    title = html.escape(str(info.get("title") or pid))
    return (f'<div class="card {classes}">{img}<div class="title" title="{title}">{title}</div>'
            f'<div>{html.escape(pid)}</div>{marks}</div>')


def write_gallery(es: Any, product_info: Mapping[str, Mapping[str, Any]], path: str | Path, *,
                  n_queries: int = 12, k: int = 10, seed: int = 0, thumb_size: int = 128,
                  neighbors: np.ndarray | None = None) -> Path:
    """Self-contained HTML page of sample queries and their top-``k`` results.

    ``es`` is an :class:`~evaluate.embeddings.EmbeddingSet`; ``product_info`` maps id to
    ``{"title": str, "image": absolute path or None}``. Each result card is framed green
    when it has the query's label and red otherwise, and marked for same label (``cat``)
    and same instance (``inst``; grey when the query has no instance). ``neighbors``
    (rows, [N, >= k+1], query included) defaults to exact inner-product search.
    """
    from scalemm.evaluate.index import exact_search
    from scalemm.evaluate.metrics import drop_self

    n = len(es)
    rng = np.random.default_rng(seed)
    labelled = [i for i in range(n) if es.labels[i]]
    with_img = [i for i in labelled if (product_info.get(es.ids[i]) or {}).get("image")]
    pool = with_img if len(with_img) >= n_queries else (labelled or list(range(n)))
    queries = np.sort(rng.choice(pool, size=min(n_queries, len(pool)), replace=False)) \
        if pool else np.zeros(0, np.int64)
    kk = min(k, max(n - 1, 0))
    if neighbors is None:
        _, nb = exact_search(es.vectors, es.vectors[queries], kk + 1) if len(queries) else (None, np.zeros((0, kk + 1), np.int64))
    else:
        nb = np.asarray(neighbors)[queries]
    ranked = drop_self(nb, queries, kk) if len(queries) else np.zeros((0, kk), np.int64)
    thumbs: dict[str, str | None] = {}
    rows_html: list[str] = []
    for qi, res in tqdm(list(zip(queries.tolist(), ranked)), desc="gallery", leave=False,
                        disable=len(queries) < 50):
        qid = es.ids[qi]
        qinfo = product_info.get(qid, {})
        cards = [_card(qid, qinfo, thumbs, "query",
                       f'<div>query · {html.escape(es.labels[qi])}</div>', thumb_size)]
        for r in res.tolist():
            if r < 0:
                continue
            same_label = bool(es.labels[qi]) and es.labels[r] == es.labels[qi]
            if es.instances[qi]:
                same_inst = es.instances[r] == es.instances[qi]
                inst = f'<span class="{"ok" if same_inst else "no"}">inst {"✓" if same_inst else "✗"}</span>'
            else:
                inst = '<span class="na">inst –</span>'
            marks = (f'<div><span class="{"ok" if same_label else "no"}">cat '
                     f'{"✓" if same_label else "✗"}</span> {inst}</div>')
            cards.append(_card(es.ids[r], product_info.get(es.ids[r], {}), thumbs,
                               "hit" if same_label else "miss", marks, thumb_size))
        rows_html.append('<div class="row">' + "".join(cards) + "</div>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Retrieval gallery</title>"
            f"<style>{_GALLERY_CSS}</style></head><body><h1>Retrieval gallery</h1>"
            f"<p>{len(queries)} sample queries (left) and their top-{kk} results by inner "
            "product; green frame: same category, red: other category; "
            "<b>inst</b>: same product instance.</p>" + "".join(rows_html) + "</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- markdown

def _pct(v: Any) -> str:
    if isinstance(v, Mapping) and set(v) >= {"mean", "std"}:
        return f"{_pct(v['mean'])} ± {_pct(v['std'])}"
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(metrics: Mapping[str, Any], images: Mapping[str, str] | None = None,
                    gallery: str | None = None) -> str:
    """The Markdown report: method tables, the ablation, the index line, plots."""
    methods = metrics.get("methods", {})
    parts = ["# Evaluation report", "", "Values in percent."]
    for sec, title in (("coarse", "Coarse-grained retrieval (same category)"),
                       ("fine", "Fine-grained retrieval (same instance)")):
        parts += ["", f"## {title}", "", _table(
            ["method", *RETRIEVAL_KEYS],
            [[name, *(_pct(m[sec][k]) for k in RETRIEVAL_KEYS)] for name, m in methods.items()])]
    parts += ["", "## Classification (linear probe) and clustering (k-means)", "", _table(
        ["method", "accuracy", "macro-F1", "NMI", "purity"],
        [[name, _pct(m["classification"]["accuracy"]), _pct(m["classification"]["macro_f1"]),
          _pct(m["clustering"]["nmi"]), _pct(m["clustering"]["purity"])]
         for name, m in methods.items()])]
    ablation = metrics.get("ablation", {})
    cols = ["mAP@1", "mAP@5", "mAP@10"]
    parts += ["", "## Modality ablation", "", _table(
        ["modalities", *(f"coarse {c}" for c in cols), *(f"fine {c}" for c in cols)],
        [[name, *(_pct(a["coarse"][c]) for c in cols), *(_pct(a["fine"][c]) for c in cols)]
         for name, a in ablation.items()])]
    index = metrics.get("index", {})
    if index:
        parts += ["", "## Index", "",
                  f"Approximate index `{index.get('type')}`: recall@10 against exact search "
                  f"{_pct(index.get('ann_recall@10'))} %."]
    for key, val in metrics.items():
        if key in REQUIRED_TOP or key in ("per_seed", "runs"):
            continue
        parts += ["", f"## {key}", ""]
        if isinstance(val, Mapping) and val and all(isinstance(v, Mapping) for v in val.values()):
            cols_x = list(dict.fromkeys(c for v in val.values() for c in v))
            parts.append(_table([key, *cols_x], [[str(n), *(_pct(v.get(c, "")) for c in cols_x)]
                                                 for n, v in val.items()]))
        else:
            parts += ["```json", json.dumps(_plain(val), indent=2, sort_keys=True), "```"]
    if images:
        parts += ["", "## Plots", ""]
        parts += [f"![{name}]({file})" for name, file in images.items()]
    if gallery:
        parts += ["", f"Retrieval examples: [{gallery}]({gallery})"]
    return "\n".join(parts) + "\n"


def write_report(out_dir: str | Path, metrics: Mapping[str, Any], *,
                 training_log: str | Path | None = None, importance: np.ndarray | None = None,
                 importance_labels: Sequence[str] | None = None, gallery_set: Any = None,
                 product_info: Mapping[str, Mapping[str, Any]] | None = None,
                 seed: int = 0) -> dict[str, Path]:
    """Write metrics.json, the plots, gallery.html (when ``gallery_set`` and ``product_info``
    are given) and report.md into ``out_dir``. Returns the written files by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {"metrics.json": write_metrics_json(metrics, out / "metrics.json")}
    images: dict[str, str] = {}
    if metrics.get("methods"):
        written["methods.png"] = plot_methods(metrics["methods"], out / "methods.png")
        images["methods"] = "methods.png"
    if metrics.get("ablation"):
        written["ablation.png"] = plot_ablation(metrics["ablation"], out / "ablation.png")
        images["modality ablation"] = "ablation.png"
    if training_log is not None:
        if Path(training_log).is_file():
            written["training_curves.png"] = plot_training_curves(training_log,
                                                                  out / "training_curves.png")
            images["training curves"] = "training_curves.png"
        else:
            log.warning("training log %s not found; no training_curves.png", training_log)
    if importance is not None and importance_labels is not None:
        written["importances.png"] = plot_importances(importance, importance_labels,
                                                      out / "importances.png")
        images["modality importances"] = "importances.png"
    gallery = None
    if gallery_set is not None and product_info is not None:
        written["gallery.html"] = write_gallery(gallery_set, product_info, out / "gallery.html",
                                                seed=seed)
        gallery = "gallery.html"
    md = out / "report.md"
    md.write_text(render_markdown(metrics, images, gallery), encoding="utf-8")
    written["report.md"] = md
    log.info("report written to %s (%s)", out, ", ".join(written))
    return written
