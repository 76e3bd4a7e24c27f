"""Product embeddings from a trained run: ``python pipelines/embed.py --run RUN --features FEATS --out X.npz``,
and/or ``--index DIR``: a catalogue index of every product (``DIR/index/catalogue``, as an evaluation
builds it, with the run that built it) for ``pipelines/search.py`` and ``pipelines/serve.py``.

``--modalities image,text`` embeds with a subset (the others are treated as absent);
``--embedding KEY=VALUE`` (repeatable) changes one of the checkpoint's embedding settings for the
``.npz`` (``--embedding modality_heads=[]``: the sum alone, as an evaluation's ``--embedding``
scores it). The
``.npz`` (no pickle) holds ids, labels, instances, vectors (L2-normalized), and also
modalities, presence, importances and ``pooled`` [N, M, d]: each modality's encoder pooled
output (the parts the embedding is weighted from; ``--no-pooled`` leaves them out). The last
stdout line is a JSON summary. The logic lives in fuse/embedder.py
(:meth:`Embedder.embed_features`, :func:`write_embeddings`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli


def main() -> dict:
    p = cli.ArgumentParser(description="Write SCALE product embeddings for a feature store.")
    p.add_argument("--run", required=True, type=Path, help="run directory of pipelines/train.py (or a .safetensors)")
    p.add_argument("--features", required=True, type=Path, help="feature directory to embed")
    p.add_argument("--out", type=Path, default=None, help="output .npz")
    p.add_argument("--index", type=Path, default=None,
                   help="also (or only) build a catalogue index of every product in this folder, for search")
    p.add_argument("--modalities", default=None, help="comma-separated subset (default: all trained)")
    p.add_argument("--embedding", action="append", default=[], metavar="KEY=VALUE",
                   help="change one of the checkpoint's embedding settings for --out (repeatable; "
                        "e.g. modality_heads=[] for the sum alone)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-pooled", action="store_true", help="leave the encoders' per-modality pooled outputs out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args()
    cli.setup_logging(level=args.log_level)
    from scalemm.config import ConfigError
    from scalemm.fuse.config import embedding_change
    from scalemm.fuse.embedder import Embedder, write_embeddings

    mods = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    t0 = time.perf_counter()
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out is None and args.index is None:
        raise ConfigError("give --out X.npz, --index DIR or both")
    if args.index is not None and mods is not None:
        raise ConfigError("--index embeds every modality the model was trained on; leave --modalities out")
    if args.index is not None and args.embedding:
        raise ConfigError("--index embeds with the checkpoint's settings (search embeds its queries so); "
                          "leave --embedding out")
    changes = dict(embedding_change(c, "--embedding") for c in args.embedding)
    embedder = Embedder.from_run(args.run, args.device)
    embedder.change_embedding(changes)
    summary: dict = {"dim": embedder.dim, "embedding": dataclasses.asdict(embedder.settings)}
    if args.out is not None:
        res = embedder.embed_features(args.features, mods, args.batch_size, progress=not args.no_progress)
        path = write_embeddings(res, args.out, with_pooled=not args.no_pooled)
        summary.update(out=str(path), items=len(res["ids"]), modalities=res["modalities"])
    if args.index is not None:
        from scalemm.evaluate.catalogue import catalogue_from_run

        cat = catalogue_from_run(embedder, args.run, args.features, args.index, batch_size=args.batch_size,
                                 progress=not args.no_progress)
        summary.update(index=str(args.index), items=cat["vectors"], index_type=cat["type"])
    return {**summary, "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    cli.run(main)
