"""The frozen skip's map: where each modality's frozen vector enters the fusion's space.

Each modality encoder adds ``frozen_skip`` times a unit vector to its first output token (its
pooled output): ``normalize((v / |v| - mu) @ W)``, with ``v`` the mean of the modality's visible
input tokens, which is the frozen backbone's global vector (:class:`fuse.model.ModalityEncoder`).
The encoder learns what to add to it. ``mu`` [dim] and ``W`` [dim, d_model] are fixed once,
before the first training step, from the train split (:func:`fit_skip_maps`): ``mu`` is the mean
of the train products' unit vectors, and ``W`` holds their top principal directions in a block
of ``d_model`` that belongs to this modality alone (:func:`blocks`: ``d_model // M`` columns
each, M the model's modalities). Training never changes them; the checkpoint keeps them.

Why: the embedding sums the modalities' outputs. Mapped by fixed random orthonormal maps (the
earlier design, which checkpoints without these buffers keep), the five frozen vectors were
superposed in one space of ``d_model`` dimensions, uncentred, each cutting into the others; a
linear probe read less from their sum than from their concatenation. Centred principal
components in blocks of their own hold the same vectors side by side: on the validation split
of the 2,200-product corpus the trained default's probe accuracy rose from 83.9 to 86.3 at equal
retrieval (docs/decisions.md, "The frozen skip in blocks of principal components").

The fit reads the token means of a sample of whole train instances (:data:`MAX_ROWS` products
at most, :func:`fuse.heads.sample_instances`) in batches, so its memory does not grow with the
catalogue; one SVD per modality of at most ``MAX_ROWS x dim``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch

from .heads import sample_rows

log = logging.getLogger(__name__)

MAX_ROWS = 4096  # train products the principal directions are fitted on at most (whole instances)
BATCH = 256  # products read at a time


def blocks(modalities: Sequence[str], d_model: int) -> dict[str, slice]:
    """The columns of ``d_model`` each modality's principal directions take: ``d_model // M`` each,
    the first ``d_model % M`` modalities one more, in the model's order."""
    n = len(modalities)
    out, at = {}, 0
    for i, m in enumerate(modalities):
        size = d_model // n + (1 if i < d_model % n else 0)
        out[m] = slice(at, at + size)
        at += size
    return out


def principal_map(vectors: np.ndarray, columns: slice, d_model: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, W)`` from the rows of ``vectors`` [n, dim] (every row a product that has the
    modality): their unit vectors' mean, and ``W`` [dim, d_model], zero but for the top principal
    directions of the centred unit vectors in ``columns`` (as many as there are: at most n - 1
    directions carry variance; the others stay zero)."""
    x = np.asarray(vectors, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mu = x.mean(0)
    w = np.zeros((x.shape[1], d_model))
    if len(x) >= 2:
        _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
        k = int(min(columns.stop - columns.start, int((s > 1e-9 * max(s[0], 1e-300)).sum())))
        w[:, columns.start:columns.start + k] = vt[:k].T
    return mu, w


def token_means(ds: Any, rows: np.ndarray, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """The mean of each product's visible tokens per modality ({m: [n, dim]}) for ``rows`` of the
    dataset (:class:`fuse.reader.FeatureDataset`), NaN rows where the product lacks the modality;
    read ``BATCH`` products at a time."""
    parts: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    for a in range(0, len(rows), BATCH):
        b = ds.get_batch([int(i) for i in rows[a:a + BATCH]])
        for m in modalities:
            tok, valid = b["tokens"][m].double(), b["mask"][m]
            n = valid.sum(1, keepdim=True)
            mean = (tok * valid[..., None]).sum(1) / n.clamp_min(1)
            parts[m].append(torch.where(n > 0, mean, float("nan")).numpy())
    return {m: np.concatenate(p) if p else np.zeros((0, ds.shapes[m].dim)) for m, p in parts.items()}


def fit_skip_maps(model: Any, ds: Any, train_rows: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Set every modality encoder's skip map of ``model`` (:class:`fuse.model.ScaleModel` with
    ``frozen_skip`` > 0) from the train split's products ``train_rows`` of ``ds``: a sample of
    whole instances, at most :data:`MAX_ROWS` products. A modality no sampled product has keeps
    its fixed random map. Returns what the fit did: products read, per modality the ones that have
    it, each modality's columns, seconds (``result.json``'s ``skip_maps``)."""
    t0 = time.perf_counter()
    pick = sample_rows(ds, train_rows, MAX_ROWS, seed)
    means = token_means(ds, pick, model.modalities)
    cols = blocks(model.modalities, model.cfg.d_model)
    used: dict[str, int] = {}
    for m in model.modalities:
        x = means[m][~np.isnan(means[m]).any(1)]
        if len(x) == 0:
            log.warning("no sampled train product has a %s: its frozen skip keeps the fixed random map", m)
            continue
        mu, w = principal_map(x, cols[m], model.cfg.d_model)
        model.encoders[m].set_skip(torch.from_numpy(mu), torch.from_numpy(w))
        used[m] = int(len(x))
    out = {"products": int(len(pick)), "rows": used, "columns": {m: [c.start, c.stop] for m, c in cols.items()},
           "seconds": round(time.perf_counter() - t0, 2)}
    log.info("frozen skip maps: principal directions of %d train products (%s) in %.1f s", len(pick),
             ", ".join(f"{m} {c.stop - c.start} columns" for m, c in cols.items()), out["seconds"])
    return out


def copy_skip_maps(src: Any, dst: Any) -> None:
    """Give ``dst`` (a :class:`fuse.model.ScaleModel`) the skip maps of ``src``: they are fixed
    before training, so an untrained model that should be what training started from needs them."""
    for m in dst.modalities:
        a, b = src.encoders[m], dst.encoders[m]
        if getattr(a, "skip", 0) > 0 and getattr(b, "skip", 0) > 0:
            b.set_skip(a.skip_mu, a.skip_map)

