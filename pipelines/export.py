"""Parquet out: every catalogue product's embedding, for pandas, Ray Data, DuckDB or HF datasets.

    python pipelines/export.py --index EVAL --features FEATS --out catalogue.parquet
    python pipelines/export.py --index EVAL --pooled FEATS --out catalogue.parquet

EVAL is the --out folder of pipelines/evaluate.py: its catalogue (the first seed's scale
embedding of every product of the store, and any products added with --add-products). One row
per product: id, label, instance, title (null where unknown), vector (fixed-size list of
float32); the run, checkpoint, config, seed and embedding_dim as JSON in the file's metadata
(key "scalemm"). --features names the stores the catalogue was embedded from (labels,
instances, and titles from the corpus their manifest names); --pooled adds each store's pooled
frozen vector (pooled_<modality>, null where absent). Then, e.g.:

    pandas.read_parquet("catalogue.parquet")     ray.data.read_parquet("catalogue.parquet")

The last stdout line is a JSON summary. The logic lives in evaluate/export.py.
"""

import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli


def main() -> dict:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, type=Path, metavar="EVAL",
                    help="evaluation output folder (pipelines/evaluate.py --out) holding the catalogue")
    ap.add_argument("--out", required=True, type=Path, help="Parquet file to write (replaced whole)")
    ap.add_argument("--features", type=Path, metavar="FEATS",
                    help="feature directory the catalogue was embedded from: labels, instances, titles")
    ap.add_argument("--pooled", nargs="?", const=True, default=None, metavar="FEATS",
                    help="also write the stores' pooled frozen vectors (of --features, or of FEATS given here)")
    ap.add_argument("--batch-rows", type=cli.int_at_least(1), help="rows per batch and row group (default: ~64 MB)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    cli.setup_logging(a.verbose)
    from scalemm.evaluate.export import export_catalogue

    features = a.features
    if isinstance(a.pooled, str):
        if features is not None and Path(a.pooled).resolve() != features.resolve():
            ap.error("--pooled FEATS and --features name different folders; give one")
        features = Path(a.pooled)
    if features is not None and not features.is_dir():
        raise FileNotFoundError(f"feature directory {features} does not exist; pass pipelines/extract.py's --out")
    cli.check_out_dir(a.out.parent, "--out")
    return export_catalogue(a.index, a.out, features, pooled=a.pooled is not None, batch_rows=a.batch_rows)


if __name__ == "__main__":
    cli.run(main)
