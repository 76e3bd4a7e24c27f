"""Stage 3: evaluate SCALE against the frozen baselines with FAISS retrieval, a linear probe
and k-means clustering; writes EVAL/metrics.json, report.md, plots and gallery.html.

    python pipelines/evaluate.py --features FEATS --checkpoint RUN --out EVAL [--uniform-checkpoint RUN_U]
    python pipelines/evaluate.py --features FEATS --model scale=RUN --model scale_paper=RUN_P --out EVAL
    python pipelines/evaluate.py --features FEATS --checkpoint RUN --model scale_sum=RUN \
        --embedding scale_sum:modality_heads=[] --out EVAL   # the same run with and without its heads
    python pipelines/evaluate.py --out EVAL --rebuild-index      # rebuild the index from saved embeddings
    python pipelines/evaluate.py --out EVAL --add-products EMB.npz   # new products into EVAL/index/catalogue

Every model (--checkpoint is --model scale=RUN, --uniform-checkpoint --model scale_uniform=RUN,
--model NAME=RUN any other, repeatable) is scored in the same run, on the same products, beside
the training-free baselines (frozen_<m>, concat_frozen, concat_text_image, concat_weighted,
concat_pca) and scale_untrained; metrics.json "paired" holds the paired bootstrap interval of
scale minus each of them.

Above --max-queries queries or --max-sample probe / k-means products the evaluation samples
(recorded in metrics.json "samples"); the catalogue index fits --memory-budget-gb.
"""

if __name__ == "evaluate":  # a library's `import evaluate` in this script's process: see scalemm/shadow.py
    import os as _os

    from scalemm.shadow import hand_over as _hand_over

    _hand_over(__name__, _os.path.dirname(_os.path.abspath(__file__)))

import argparse
import sys

import _bootstrap  # noqa: F401
from scalemm import cli


def main() -> dict:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", help="feature directory (pipelines/extract.py --out)")
    ap.add_argument("--checkpoint", help="training run directory, or a folder of seed-*/ runs (pipelines/train.py --out)")
    ap.add_argument("--uniform-checkpoint", help="the same for runs trained with harmonize: false (scale_uniform)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=RUN",
                    help="another trained model to score in the same run (repeatable), e.g. "
                         "scale_paper=runs/paper; scale=RUN is the default model (what --checkpoint gives)")
    ap.add_argument("--embedding", action="append", default=[], metavar="NAME:KEY=VALUE",
                    help="model NAME (not scale) embeds with this embedding setting instead of its "
                         "checkpoint's (repeatable), e.g. scale_sum:modality_heads=[] for the sum alone")
    ap.add_argument("--out", required=True, help="evaluation output directory")
    ap.add_argument("--media-root", help="media root for the gallery images (default: from the store manifest)")
    ap.add_argument("--rebuild-index", action="store_true",
                    help="only rebuild OUT/index/scale from OUT/embeddings/scale.npz and re-check the metrics")
    ap.add_argument("--split", default="test", choices=["test", "val"],
                    help="split to report on (test: the headline; val: while choosing settings)")
    ap.add_argument("--drop-prob", type=float, default=0.3,
                    help="robustness: probability that a query product loses each modality (default 0.3)")
    ap.add_argument("--drop-draws", type=cli.int_at_least(1), default=5,
                    help="robustness: independent draws of the dropped modalities per seed, averaged (default 5)")
    ap.add_argument("--max-queries", type=cli.int_at_least(1), default=10_000,
                    help="retrieval queries at most (a recorded sample above; default 10000)")
    ap.add_argument("--max-sample", type=cli.int_at_least(2), default=100_000,
                    help="products for the linear probe and k-means at most (default 100000)")
    ap.add_argument("--memory-budget-gb", type=float, default=4.0,
                    help="memory the catalogue index may take; it chooses HNSW, IVF-Flat or IVF-PQ (default 4)")
    ap.add_argument("--add-products", metavar="EMB",
                    help="add the products of this embeddings file (pipelines/embed.py) to OUT/index/catalogue")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    cli.setup_logging(a.verbose)
    from scalemm.evaluate.headline import format_headline
    from scalemm.evaluate.run import rebuild_and_check, run_evaluation

    if a.rebuild_index:
        return rebuild_and_check(a.out)
    if a.add_products:
        from scalemm.evaluate.run import add_products

        return add_products(a.out, a.add_products)
    from scalemm.config import ConfigError
    from scalemm.evaluate.models import embedding_changes, model_runs

    try:
        models = model_runs(a.checkpoint, a.uniform_checkpoint, a.model)
        changes = embedding_changes(a.embedding, list(models))
    except ConfigError as e:
        ap.error(str(e))
    if not a.features:
        ap.error("--features is required (unless --rebuild-index or --add-products)")
    cli.check_out_dir(a.out)
    from scalemm.evaluate.budget import EvalBudget
    from scalemm.evaluate.run import EvalJob

    budget = EvalBudget(max_queries=a.max_queries, max_sample=a.max_sample, memory_budget_gb=a.memory_budget_gb)
    m = run_evaluation(EvalJob(a.features, models, a.out, a.media_root, split=a.split, drop_prob=a.drop_prob,
                               drop_draws=a.drop_draws, budget=budget, embedding=changes))
    print(format_headline(m), file=sys.stderr)
    return {"out": a.out, "items": m["items"], "seconds": m["seconds"], "timings": m["timings"], "index": m["index"],
            "split": m["split"], "seeds": m["seeds"], "models": m["models"], "embedding_dim": m["embedding_dim"],
            "scale": {"coarse_mAP@1": m["methods"]["scale"]["coarse"]["mAP@1"],
                      "fine_mAP@1": m["methods"]["scale"]["fine"]["mAP@1"]}}


if __name__ == "__main__":
    cli.run(main)
