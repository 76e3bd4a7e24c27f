"""The Markdown report: method tables, the modality ablation, the index line, extras, plots."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from scalemm.evaluate.metrics import RETRIEVAL_KEYS
from scalemm.evaluate.schema import REQUIRED_TOP, to_plain


def _pct(v: Any) -> str:
    if isinstance(v, Mapping) and set(v) >= {"mean", "std"}:
        return f"{_pct(v['mean'])} ± {_pct(v['std'])}"
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


OWN_SECTIONS = ("paired", "paired_bootstrap", "ablation_paired", "baselines", "dims", "embedding_dim", "models", "embedding_changes")
PAIRED_COLUMNS = (("coarse", "coarse mAP@1"), ("fine", "fine mAP@1"), ("classification", "accuracy"))


def _points(v: Any) -> str:
    return f"{100 * v:+.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else "-"


def _interval(c: Any) -> str:
    """``+1.23 [-0.40, +2.90]`` (points), bold when the interval excludes 0."""
    if not isinstance(c, Mapping):
        return "-"
    text = f"{_points(c.get('diff'))} [{_points(c.get('lo'))}, {_points(c.get('hi'))}]"
    lo, hi = c.get("lo"), c.get("hi")
    sure = isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and (lo > 0 or hi < 0)
    return f"**{text}**" if sure else text


def _paired_section(metrics: Mapping[str, Any]) -> list[str]:
    paired = metrics.get("paired")
    if not isinstance(paired, Mapping) or not paired:
        return []
    info = metrics.get("paired_bootstrap", {})
    dims = metrics.get("dims", {})
    head = (f"scale minus each method, in points: the difference of the seed means and the paired bootstrap "
            f"{100 * info.get('level', 0.95):.0f} % interval ({info.get('resamples', '?')} resamples of the "
            f"{info.get('products', '?')} evaluated products, seeds pooled). Bold: the interval excludes 0. "
            f"NMI has no paired interval: see the seeds' std above.")
    rows = [[str(b), str(dims.get(b, "")), *(_interval(p.get(t)) for t, _ in PAIRED_COLUMNS)]
            for b, p in paired.items()]
    return ["", "## Paired comparison: scale minus each method", "", head, "",
            _table(["method", "dims", *(c for _, c in PAIRED_COLUMNS)], rows)]


def _baselines_section(metrics: Mapping[str, Any]) -> list[str]:
    b = metrics.get("baselines")
    if not isinstance(b, Mapping) or not b:
        return []
    lines = ["", "## Baselines and widths", ""]
    dims = metrics.get("dims", {})
    if dims:
        lines += [_table(["method", "dims"], [[str(n), str(d)] for n, d in dims.items()]), ""]
    changes = metrics.get("embedding_changes")
    if isinstance(changes, Mapping) and changes:
        lines += ["Embedding settings changed from the checkpoint's (`--embedding`): " + "; ".join(
            f"{n}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in c.items()) for n, c in changes.items()), ""]
    w = b.get("concat_weighted")
    if isinstance(w, Mapping):
        ws = ", ".join(f"{m} {v:g}" for m, v in w.get("weights", {}).items())
        where = ("**chosen on the split reported here (val)**" if w.get("chosen_on_reported_split")
                 else f"chosen on {w.get('val_products')} validation products")
        lines.append(f"- `concat_weighted`: weights {ws}; {where} ({w.get('rule', '')}).")
    p = b.get("concat_pca")
    if isinstance(p, Mapping):
        lines.append(f"- `concat_pca`: PCA fitted on {p.get('fitted_on_products')} train products, "
                     f"{p.get('components')} components (target {p.get('target_width')}), "
                     f"{_pct(p.get('explained_variance'))} % of the variance.")
    if "concat_text_image" in b:
        lines.append("- `concat_text_image`: the L2-normalised frozen text and image vectors at equal weight.")
    if "scale_untrained" in b:
        lines.append("- `scale_untrained`: the scale architecture, config and seed at initialisation, never trained.")
    return lines


def render_markdown(metrics: Mapping[str, Any], images: Mapping[str, str] | None = None,
                    gallery: str | None = None) -> str:
    """The Markdown report: method tables, the ablation, the index line, plots."""
    methods = metrics.get("methods", {})
    parts = ["# Evaluation report", "", "Values in percent."]
    if "embedding_dim" in metrics:
        parts += ["", f"Default product embedding (`scale`): {metrics['embedding_dim']} floats."]
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
    parts += _paired_section(metrics)
    parts += _baselines_section(metrics)
    ablation = metrics.get("ablation", {})
    steps = metrics.get("ablation_paired") or {}
    cols = ["mAP@1", "mAP@5", "mAP@10"]
    parts += ["", "## Modality ablation", ""]
    if steps:
        parts += ["The last two columns: each row minus the row above, in points, with the paired bootstrap "
                  "interval (the same resamples of the evaluated products for both subsets; bold: it excludes 0).",
                  ""]
    parts += [_table(
        ["modalities", *(f"coarse {c}" for c in cols), *(f"fine {c}" for c in cols),
         *(["coarse mAP@1 added", "fine mAP@1 added"] if steps else [])],
        [[name, *(_pct(a["coarse"][c]) for c in cols), *(_pct(a["fine"][c]) for c in cols),
          *([_interval(steps.get(name, {}).get("coarse")), _interval(steps.get(name, {}).get("fine"))]
            if steps else [])]
         for name, a in ablation.items()])]
    index = metrics.get("index", {})
    if index:
        parts += ["", "## Index", "",
                  f"Approximate index `{index.get('type')}`: recall@10 against exact search "
                  f"{_pct(index.get('ann_recall@10'))} %."]
    for key, val in metrics.items():
        if key in REQUIRED_TOP or key in ("per_seed", "runs", *OWN_SECTIONS):
            continue
        parts += ["", f"## {key}", ""]
        if isinstance(val, Mapping) and val and all(isinstance(v, Mapping) for v in val.values()):
            cols_x = list(dict.fromkeys(c for v in val.values() for c in v))
            parts.append(_table([key, *cols_x], [[str(n), *(_pct(v.get(c, "")) for c in cols_x)]
                                                 for n, v in val.items()]))
        else:
            parts += ["```json", json.dumps(to_plain(val), indent=2, sort_keys=True), "```"]
    if images:
        parts += ["", "## Plots", ""]
        parts += [f"![{name}]({file})" for name, file in images.items()]
    if gallery:
        parts += ["", f"Retrieval examples: [{gallery}]({gallery})"]
    return "\n".join(parts) + "\n"
