"""The paired bootstrap: how sure is "scale beats baseline X" on the test products?

For each baseline and each of coarse mAP@1, fine mAP@1 and classification accuracy, the 95 %
percentile interval of (scale's figure - the baseline's figure) over ``n_boot`` resamples of the
evaluated products, drawn with replacement. The resample is *paired*: the same products for every
method, so what the products have in common (easy or hard ones) cancels in the difference.

Within one resample each figure is recomputed from the per-product outcomes that the scoring keeps
(:func:`evaluate.protocol.evaluate_on_split` ``per_product``): mAP@1 is the mean hit at rank 1 over
the resampled products that are queries of that task (a product drawn twice counts twice), the
accuracy the mean correctness over the resampled products of the probe's test set. The training
seeds are pooled: a method's figure in a resample is the mean of its per-seed figures on that
resample (every seed scores the same products, so it is the resampled mean of the seed-averaged
outcomes; a model given with fewer runs than ``scale`` pools the seeds it has). The point estimate ``diff`` is the difference of the seed means on the products as
they are (the figures of ``metrics.json`` ``methods``).

Resampled are the products that any task scores (every evaluated product with a label, unless
the evaluation samples, :mod:`evaluate.budget`). NMI is not a per-product mean and keeps the
seeds' std.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

PAIRED_TASKS: tuple[str, ...] = ("coarse", "fine", "classification")
N_BOOT = 1000
LEVEL = 0.95
_CELLS = 20_000_000  # resamples x products per chunk of the count matrix (float64: 160 MB)


def pooled(per_seed: Sequence[Mapping[str, np.ndarray]], task: str) -> np.ndarray:
    """The seeds' per-product outcomes of one task averaged (NaN where not scored)."""
    a = np.stack([np.asarray(p[task], dtype=np.float64) for p in per_seed])
    bad = np.isnan(a)
    if not (bad == bad[0]).all():
        raise ValueError(f"{task}: the seeds scored different products; a paired bootstrap needs the same ones")
    return a.mean(axis=0)


def resample_counts(n: int, n_boot: int, rng: np.random.Generator, chunk: int) -> np.ndarray:
    """[chunk, n] how often each of n products is drawn in each of ``chunk`` resamples of size n."""
    idx = rng.integers(0, n, size=(chunk, n)) + (np.arange(chunk) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=chunk * n).reshape(chunk, n).astype(np.float64)


def paired_bootstrap(per_product: Mapping[str, Sequence[Mapping[str, np.ndarray]]], reference: str = "scale",
                     baselines: Sequence[str] | None = None, *, tasks: Sequence[str] = PAIRED_TASKS,
                     n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict[str, Any]:
    """``{baseline: {task: {"diff", "lo", "hi"}}}``: ``reference`` minus each baseline (module doc).

    ``per_product``: method -> per seed -> task -> float [n products] (1.0 hit / right, 0.0 miss,
    NaN not scored), every method over the same products in the same order. ``baselines``:
    default every method but ``reference``. A task no product is scored by gets NaN figures.
    """
    if reference not in per_product:
        raise KeyError(f"no per-product outcomes of '{reference}'")
    baselines = [b for b in (baselines if baselines is not None else per_product) if b != reference]
    names = [reference, *baselines]
    outcomes = {m: {t: pooled(per_product[m], t) for t in tasks} for m in names}
    n_all = len(next(iter(outcomes[reference].values())))
    for m in names:
        for t in tasks:
            if len(outcomes[m][t]) != n_all:
                raise ValueError(f"{m} {t}: {len(outcomes[m][t])} products, {reference}: {n_all}")
    scored = np.zeros(n_all, dtype=bool)  # the products some task scores: the ones resampled
    for m in names:
        for t in tasks:
            scored |= ~np.isnan(outcomes[m][t])
    keep = np.flatnonzero(scored)
    n = len(keep)
    vals = {m: {t: np.nan_to_num(outcomes[m][t][keep]) for t in tasks} for m in names}
    valid = {m: {t: (~np.isnan(outcomes[m][t][keep])).astype(np.float64) for t in tasks} for m in names}
    figs = {m: {t: np.empty(n_boot) for t in tasks} for m in names}
    rng = np.random.default_rng([int(seed), 0xB007])
    chunk = max(1, min(n_boot, _CELLS // max(n, 1)))
    for s in range(0, n_boot, chunk):
        c = resample_counts(n, n_boot, rng, min(chunk, n_boot - s))
        for m in names:
            for t in tasks:
                den = c @ valid[m][t]
                with np.errstate(invalid="ignore", divide="ignore"):
                    figs[m][t][s:s + len(c)] = np.where(den > 0, (c @ vals[m][t]) / den, np.nan)
    q = 100 * (1 - level) / 2
    out: dict[str, Any] = {}
    for b in baselines:
        out[b] = {}
        for t in tasks:
            ref, base = outcomes[reference][t], outcomes[b][t]
            diff = (float(np.nanmean(ref)) - float(np.nanmean(base))
                    if (~np.isnan(ref)).any() and (~np.isnan(base)).any() else float("nan"))
            d = figs[reference][t] - figs[b][t]
            d = d[np.isfinite(d)]
            lo, hi = (np.percentile(d, [q, 100 - q]) if len(d) else (np.nan, np.nan))
            out[b][t] = {"diff": diff, "lo": float(lo), "hi": float(hi)}
    return out


def paired_steps(per_product: Mapping[str, Sequence[Mapping[str, np.ndarray]]], order: Sequence[str], *,
                 tasks: Sequence[str] = ("coarse", "fine"), n_boot: int = N_BOOT, seed: int = 0,
                 level: float = LEVEL) -> dict[str, Any]:
    """``{step: {task: {"diff", "lo", "hi"}}}``: each step of a sequence (the modality ablation's
    nested subsets) minus the step before it, with the paired bootstrap interval of
    :func:`paired_bootstrap` (the same products drawn for both). Steps without outcomes are
    left out."""
    have = [name for name in order if name in per_product]
    return {cur: paired_bootstrap({cur: per_product[cur], prev: per_product[prev]}, cur, [prev], tasks=tasks,
                                  n_boot=n_boot, seed=seed, level=level)[prev]
            for prev, cur in zip(have, have[1:])}


def describe(n_products: int, n_boot: int = N_BOOT, seeds: Sequence[int] = (), level: float = LEVEL) -> dict[str, Any]:
    """What ``metrics.json`` ``paired_bootstrap`` records beside the intervals."""
    return {"resamples": int(n_boot), "level": level, "products": int(n_products), "seeds": list(seeds),
            "reference": "scale", "tasks": {"coarse": "mAP@1", "fine": "mAP@1", "classification": "accuracy"},
            "method": "paired percentile bootstrap over the evaluated products (drawn with replacement, the same "
                      "draws for every method); seeds pooled: per resample the mean of the per-seed figures"}
