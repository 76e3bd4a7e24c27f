"""Write a synthetic feature store of N products directly, without backbones (corpora/scalestore.py):

    python pipelines/make_scalestore.py --out FEATS --items 1000000 [--seed S] [--shard-size 4096]

For scale tests and benchmarks: training (pipelines/train.py --features FEATS) and evaluation
read it as any extracted store; its provenance says pretrained: false, synthetic. About 3.2 KB
per product on disk (1M products: ~3.2 GB). The last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli
from scalemm.errors import UserError


def main() -> dict:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="feature directory to create (must not hold files)")
    p.add_argument("--items", required=True, type=cli.int_at_least(1), help="number of products")
    p.add_argument("--seed", default=0, type=cli.int_at_least(0), help="random seed (default 0)")
    p.add_argument("--shard-size", default=4096, type=cli.int_at_least(1), help="products per shard (default 4096)")
    p.add_argument("--categories", default=0, type=cli.int_at_least(0),
                   help="number of categories (default: one per 2,000 products, 8 to 1,000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args()
    cli.setup_logging(level="WARNING" if a.quiet else "INFO")
    cli.check_out_dir(a.out)
    from scalemm.corpora.scalestore import ScaleStoreSpec, bytes_per_item, write_scale_store

    spec = ScaleStoreSpec(n_items=a.items, seed=a.seed, shard_size=a.shard_size, n_categories=a.categories)
    need = bytes_per_item(spec) * a.items
    parent = a.out.absolute()
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if need > 0.9 * free:
        raise UserError(f"{a.items} products need about {need / 1e9:.1f} GB, but {parent} has {free / 1e9:.1f} GB "
                        f"free; choose fewer --items or another --out")
    return write_scale_store(a.out, spec, progress=not a.quiet)


if __name__ == "__main__":
    cli.run(main)
