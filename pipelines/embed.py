"""Product embeddings from a trained run: ``python pipelines/embed.py --run RUN --features FEATS --out X.npz``.

``--modalities image,text`` embeds with a subset (the others are treated as absent). The
``.npz`` (no pickle) holds ids, labels, instances, vectors (L2-normalized), and also
modalities, presence, importances and ``pooled`` [N, M, d]: each modality's encoder pooled
output (the parts the embedding is weighted from; ``--no-pooled`` leaves them out). The last
stdout line is a JSON summary. The logic lives in fuse/embedder.py
(:meth:`Embedder.embed_features`, :func:`save_embeddings`).
"""

from __future__ import annotations

import time
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli


def main() -> dict:
    p = cli.ArgumentParser(description="Write SCALE product embeddings for a feature store.")
    p.add_argument("--run", required=True, type=Path, help="run directory of pipelines/train.py (or a .safetensors)")
    p.add_argument("--features", required=True, type=Path, help="feature directory to embed")
    p.add_argument("--out", required=True, type=Path, help="output .npz")
    p.add_argument("--modalities", default=None, help="comma-separated subset (default: all trained)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-pooled", action="store_true", help="leave the encoders' per-modality pooled outputs out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args()
    cli.setup_logging(level=args.log_level)
    from scalemm.config import ConfigError
    from scalemm.fuse.embedder import Embedder, save_embeddings

    mods = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    t0 = time.perf_counter()
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    embedder = Embedder.from_run(args.run, args.device)
    res = embedder.embed_features(args.features, mods, args.batch_size, progress=not args.no_progress)
    path = save_embeddings(res, args.out, with_pooled=not args.no_pooled)
    return {"out": str(path), "items": len(res["ids"]), "dim": int(res["vectors"].shape[1]),
            "modalities": res["modalities"], "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    cli.run(main)
