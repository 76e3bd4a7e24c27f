"""The fair baselines: what a practitioner tries before training anything, and the model untrained.

All the concatenations are built from the frozen vectors (each store's pooled vector,
L2-normalised, zero where a product lacks the modality: the ``frozen_<m>`` of
:func:`evaluate.embeddings.frozen_baselines`), and every one is L2-normalised as a whole at the
end, as ``concat_frozen`` is (:func:`fair_baselines` builds them all for an evaluation):

* ``concat_text_image`` (:func:`concat_text_image`): the title's and the image's vectors side by
  side at equal weight.
* ``concat_weighted`` (:func:`concat_weighted`, :func:`choose_weights`): every modality's vector
  times a weight chosen on the **validation** split, never on the split reported (the rule is in
  :func:`choose_weights`).
* ``concat_pca`` (:func:`concat_pca`): the full concatenation projected by a PCA fitted on the
  **train** split's products only, to the default embedding's width (the ``scale`` embedding of
  the first model; :data:`DEFAULT_WIDTH` without one), then L2-normalised.
* ``scale_untrained`` (:data:`UNTRAINED`; built by :meth:`fuse.embedder.Embedder.untrained`): the
  scale model's architecture at initialisation, same config and seed, its weights never trained:
  what training adds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from scalemm.splits import rows_of

from .budget import Samples
from .embeddings import FROZEN_PREFIX, EmbeddingSet, frozen_baselines, l2_normalize
from .metrics import coarse_query_mask, fine_query_mask
from .protocol import SplitView

log = logging.getLogger(__name__)

TEXT_IMAGE = "concat_text_image"
WEIGHTED = "concat_weighted"
PCA_NAME = "concat_pca"
UNTRAINED = "scale_untrained"
DEFAULT_WIDTH = 384  # concat_pca's width when no model gives one
WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
MAX_PASSES = 4
MAX_VAL_PRODUCTS = 2000  # concat_weighted's weights are chosen on at most this many validation products
MAX_PCA_PRODUCTS = 10_000  # concat_pca is fitted on at most this many train products (a seeded sample)


def frozen_modalities(frozen: Mapping[str, EmbeddingSet]) -> list[str]:
    """The modalities with a ``frozen_<m>`` set, in their order."""
    return [n.removeprefix(FROZEN_PREFIX) for n in frozen if n.startswith(FROZEN_PREFIX)]


def _like(ref: EmbeddingSet, vectors: np.ndarray) -> EmbeddingSet:
    return EmbeddingSet(list(ref.ids), vectors, list(ref.labels), list(ref.instances))


def weighted_concat(frozen: Mapping[str, EmbeddingSet], weights: Mapping[str, float]) -> np.ndarray:
    """``concat_m weights[m] * frozen_<m>``, L2-normalised as a whole (float32 [N, sum of widths])."""
    parts = [float(w) * frozen[FROZEN_PREFIX + m].vectors for m, w in weights.items()]
    return l2_normalize(np.concatenate(parts, axis=1))


def concat_text_image(frozen: Mapping[str, EmbeddingSet]) -> EmbeddingSet | None:
    """The normalised frozen title (``text``) and ``image`` vectors concatenated at equal weight,
    then L2-normalised; None without both stores."""
    if not {FROZEN_PREFIX + "text", FROZEN_PREFIX + "image"} <= set(frozen):
        return None
    return _like(frozen[FROZEN_PREFIX + "text"], weighted_concat(frozen, {"text": 1.0, "image": 1.0}))


# ----------------------------------------------------------------------------- concat_weighted

def nearest_neighbour_score(grams: np.ndarray, present: np.ndarray, weights: np.ndarray, labels: Sequence[str],
                            instances: Sequence[str]) -> dict[str, float]:
    """Coarse and fine mAP@1 (= precision at rank 1, the query left out) of the weighted
    concatenation, by exact search, from the per-modality similarity matrices ``grams`` [M, n, n]
    of normalised vectors and ``present`` [n, M] (1 where the vector is non-zero)."""
    w2 = np.asarray(weights, dtype=np.float64) ** 2
    sims = np.tensordot(w2, grams, axes=1)
    norm = np.sqrt(present @ w2)
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    sims = sims * inv[:, None] * inv[None, :]
    np.fill_diagonal(sims, -np.inf)
    nn = sims.argmax(axis=1)
    lab, ins = np.asarray(list(labels), dtype=object), np.asarray(list(instances), dtype=object)
    out = {}
    for task, keys, usable in (("coarse", lab, coarse_query_mask(list(labels))),
                               ("fine", ins, fine_query_mask(list(instances)))):
        out[task] = float((keys[nn] == keys)[usable].mean()) if usable.any() else 0.0
    return out


def choose_weights(val: Mapping[str, EmbeddingSet], grid: Sequence[float] = WEIGHT_GRID,
                   max_passes: int = MAX_PASSES) -> dict[str, Any]:
    """The per-modality weights of ``concat_weighted``, chosen on the validation products ``val``
    (``frozen_<m>`` sets of those products only).

    Rule: greedy coordinate ascent on validation coarse mAP@1 + fine mAP@1 (exact nearest
    neighbour, the query left out). Start from equal weights (1 each: ``concat_frozen``); take
    the modalities in order, and give each the value of ``grid`` that maximises the score with
    the others held; a value replaces the current one only if it scores strictly higher. Repeat
    the passes until one changes nothing (at most ``max_passes``). The chosen weights never score
    below ``concat_frozen`` on validation. An all-zero choice is impossible (it scores 0).

    Returns ``{"weights": {m: w}, "val_score": {"coarse", "fine"}, "equal_weights_val_score",
    "val_products", "passes", "grid", "rule"}``.
    """
    mods = frozen_modalities(val)
    if not mods:
        raise ValueError("no frozen_<m> set to weight")
    ref = val[FROZEN_PREFIX + mods[0]]
    x = [val[FROZEN_PREFIX + m].vectors.astype(np.float64) for m in mods]  # per modality [n, d_m]
    grams = np.stack([v @ v.T for v in x])
    present = np.stack([(np.abs(v).sum(axis=1) > 0) for v in x], axis=1).astype(np.float64)

    def score(w: np.ndarray) -> tuple[float, dict[str, float]]:
        s = nearest_neighbour_score(grams, present, w, ref.labels, ref.instances)
        return s["coarse"] + s["fine"], s

    w = np.ones(len(mods))
    best, parts = score(w)
    equal = dict(parts)
    passes = 0
    for passes in range(1, max_passes + 1):
        changed = False
        for j in range(len(mods)):
            for g in grid:
                if g == w[j]:
                    continue
                trial = w.copy()
                trial[j] = g
                if not trial.any():
                    continue
                s, p = score(trial)
                if s > best + 1e-12:
                    best, parts, w, changed = s, p, trial, True
        if not changed:
            break
    return {"weights": {m: float(v) for m, v in zip(mods, w)}, "val_score": parts, "equal_weights_val_score": equal,
            "val_products": len(ref), "passes": passes, "grid": [float(g) for g in grid],
            "rule": "greedy coordinate ascent from equal weights over the grid, maximising validation coarse "
                    "mAP@1 + fine mAP@1; a weight changes only on a strict gain"}


def concat_weighted(frozen: Mapping[str, EmbeddingSet], weights: Mapping[str, float]) -> EmbeddingSet:
    """Every modality's normalised frozen vector times its weight, concatenated, L2-normalised. A
    modality of weight 0 is left out of the vector (its columns would be zeros: the same inner
    products, a narrower vector)."""
    mods = frozen_modalities(frozen)
    kept = {m: float(weights.get(m, 0.0)) for m in mods if float(weights.get(m, 0.0)) > 0}
    if not kept:
        raise ValueError(f"every weight is 0: {dict(weights)}")
    return _like(frozen[FROZEN_PREFIX + mods[0]], weighted_concat(frozen, kept))


def validation_sample(rows: np.ndarray, seed: int, limit: int = MAX_VAL_PRODUCTS) -> np.ndarray:
    """At most ``limit`` of the validation ``rows`` (a seeded sample, sorted) for choosing weights."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng([int(seed), 0x3E1]).choice(rows, size=limit, replace=False))


# ----------------------------------------------------------------------------- concat_pca

def concat_pca(frozen: Mapping[str, EmbeddingSet], train_rows: np.ndarray, width: int,
               seed: int = 0, max_fit: int = MAX_PCA_PRODUCTS) -> tuple[EmbeddingSet, dict[str, Any]]:
    """The concatenation of every normalised frozen vector, projected by a PCA (scikit-learn's,
    exact: an SVD, or the covariance's eigendecomposition when the products outnumber the dims)
    fitted on the rows ``train_rows`` only (the train split's products; at most ``max_fit`` of them,
    a seeded sample) to ``width`` components (fewer when the concatenation's width, or the train
    products less one, allow fewer), then L2-normalised. Returns the set and ``{"components", "target_width",
    "fitted_on_products", "train_products", "explained_variance"}``."""
    from sklearn.decomposition import PCA

    mods = frozen_modalities(frozen)

    def concat(rows: np.ndarray | slice) -> np.ndarray:
        return np.concatenate([frozen[FROZEN_PREFIX + m].vectors[rows] for m in mods], axis=1).astype(np.float64)

    n = len(frozen[FROZEN_PREFIX + mods[0]])
    dims = sum(frozen[FROZEN_PREFIX + m].dim for m in mods)
    train_rows = np.asarray(train_rows, dtype=np.int64)
    if len(train_rows) < 2:
        raise ValueError(f"concat_pca needs at least 2 train products to fit on, got {len(train_rows)}")
    fit_rows = train_rows if len(train_rows) <= max_fit else np.sort(
        np.random.default_rng([int(seed), 0x9CA]).choice(train_rows, size=max_fit, replace=False))
    # n centred products span at most n - 1 directions: a component beyond them has no variance on
    # the products it was fitted on, and the probe's standardiser would blow its noise up
    k = int(min(width, len(fit_rows) - 1, dims))
    if k < width:
        log.warning("concat_pca: %d components (not %d): %d train products, %d concatenated dims", k, width,
                    len(fit_rows), dims)
    solver = "covariance_eigh" if len(fit_rows) > 2 * dims else "full"
    pca = PCA(n_components=k, svd_solver=solver, random_state=seed).fit(concat(fit_rows))
    vec = np.empty((n, k), dtype=np.float32)
    step = max(1, (1 << 25) // max(dims, 1))  # 256 MB of float64 a chunk
    for a in range(0, n, step):
        vec[a:a + step] = l2_normalize(pca.transform(concat(slice(a, a + step))))
    return _like(frozen[FROZEN_PREFIX + mods[0]], vec), {
        "components": k, "target_width": int(width), "fitted_on_products": int(len(fit_rows)),
        "train_products": int(len(train_rows)), "solver": solver,
        "explained_variance": float(pca.explained_variance_ratio_.sum())}


# ----------------------------------------------------------------------------- all of them

def fair_baselines(features: Path, frozen: Mapping[str, EmbeddingSet], view: SplitView, work: np.ndarray | None,
                   local: Samples, width: int, seed: int) -> tuple[dict[str, EmbeddingSet], dict[str, Any]]:
    """``concat_text_image``, ``concat_weighted`` (weights chosen on the validation split) and
    ``concat_pca`` (fitted on the train split's products) from the frozen sets (this module),
    and what each was built from (``metrics.json`` ``baselines``)."""
    sets: dict[str, EmbeddingSet] = {}
    info: dict[str, Any] = {}
    ti = concat_text_image(frozen)
    if ti is not None:
        sets[TEXT_IMAGE] = ti
        info[TEXT_IMAGE] = {"modalities": {"text": 1.0, "image": 1.0},
                            "rule": "L2-normalised frozen text and image vectors at equal weight, L2-normalised"}
    else:
        log.warning("no text or no image store: concat_text_image is left out")
    val_rows = rows_of(view.names, "val")
    if len(val_rows) >= 2:
        pick = validation_sample(val_rows, seed)
        if work is None:
            val = {n: e.subset(pick) for n, e in frozen.items() if n.startswith("frozen_")}
        else:  # at scale only the scored products are in memory: the validation sample's pooled vectors read apart
            val = {n: e for n, e in frozen_baselines(features, rows=pick).items() if n.startswith("frozen_")}
        chosen = choose_weights(val)
        sets[WEIGHTED] = concat_weighted(frozen, chosen["weights"])
        info[WEIGHTED] = {**chosen, "chosen_on": "val", "chosen_on_reported_split": view.on == "val",
                          "val_products_of": int(len(val_rows))}
        if view.on == "val":
            log.warning("concat_weighted: its weights were chosen on the val split, which this evaluation reports on "
                        "(metrics.json baselines.concat_weighted.chosen_on_reported_split)")
    else:
        log.warning("the val split holds %d product(s): concat_weighted (weights chosen on val) is left out",
                    len(val_rows))
    try:
        sets[PCA_NAME], pinfo = concat_pca(frozen, local.train_rows, width, seed=seed)
        info[PCA_NAME] = {**pinfo, "fitted_on": "train"}
    except ValueError as e:
        log.warning("concat_pca is left out: %s", e)
    info[UNTRAINED] = {"rule": "the scale runs' architecture and config, built with their seeds, never trained"}
    return sets, info
