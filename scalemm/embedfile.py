"""The embeddings file: product vectors as a plain ``.npz``, written by ``fuse/`` and read by
``evaluate/``.

Arrays (no pickles: strings are unicode arrays, so ``np.load(allow_pickle=False)`` reads it)::

    format_version  int64 scalar (FORMAT_VERSION)
    ids             [N] unicode: product ids, unique
    labels          [N] unicode: category labels ('' when unknown)
    instances       [N] unicode: instance ids ('' when unknown)
    vectors         float32 [N, D]: the product embeddings

and, from ``pipelines/embed.py``, extras beside them: ``modalities`` [M] unicode,
``presence`` bool [N, M], ``importances`` float32 [N, M], ``pooled`` float32 [N, M, d],
``weights_sha256`` unicode scalar (the checkpoint that embedded them: a catalogue index takes
only its own model's vectors), ``embedding_rule`` int64 scalar (how the model's outputs became
the vectors, ``fuse.model.EMBEDDING_RULE``; absent: rule 1) and ``features`` unicode scalar (the
store they came from: search shows added products' titles from it).
An evaluation's ``EVAL/embeddings/<method>.npz`` holds the required arrays only, and is
enough to rebuild that method's index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from scalemm.atomic import save_npz_atomic

FORMAT_VERSION = 1
REQUIRED = ("ids", "vectors", "labels", "instances")


def save_embeddings(path: str | Path, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str],
                    instances: Sequence[str], **extras: np.ndarray | Sequence[str]) -> Path:
    """Write the file atomically (parent folders made); ``extras`` are stored as given (lists of
    strings as unicode arrays). Returns ``path``."""
    arrays = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64),
              "ids": np.array(list(ids), dtype=np.str_), "vectors": np.asarray(vectors),
              "labels": np.array(list(labels), dtype=np.str_),
              "instances": np.array(list(instances), dtype=np.str_)}
    for k, v in extras.items():
        arrays[k] = v if isinstance(v, np.ndarray) else np.array(list(v), dtype=np.str_)
    return save_npz_atomic(path, arrays)


def load_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of the file. Raises FileNotFoundError, or ValueError naming the file when it
    is not an embeddings file (unreadable, or without the required arrays)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = set(REQUIRED) - set(z.files)
            if missing:
                raise ValueError(f"missing arrays {sorted(missing)}")
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read embeddings file {path}: {e}; write it again "
                         f"(pipelines/embed.py or pipelines/evaluate.py)") from e
