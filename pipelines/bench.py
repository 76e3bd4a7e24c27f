"""Benchmarks of the three stages, measured side by side in one run; prints a table (each
target next to its measured value, PASS/MISS) and writes every figure to a JSON file.
See bench/main.py for what is measured and how.

    python pipelines/bench.py --quick --out bench.json     # a few minutes on 2 cores (make bench)
    python pipelines/bench.py --out bench.json --md bench.md
    python pipelines/bench.py --scale --out scale.json      # training and evaluation at 100k and 1M products (bench/scale.py)
"""

import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli

ROOT = Path(__file__).resolve().parents[1]


def main() -> dict:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small and fast (tiny backbones, 100k vectors)")
    ap.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON file to write (default bench.json)")
    ap.add_argument("--md", type=Path, default=None, help="also write the table as Markdown to this file")
    ap.add_argument("--items", type=int, default=None, help="N (default 32 quick, 256 full)")
    ap.add_argument("--config", type=Path, default=None,
                    help="extraction config (default configs/tiny.yaml quick, configs/offline.yaml full)")
    ap.add_argument("--sizes", default=None, help="index gallery sizes, comma-separated (default 100000[,1000000])")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all this process may use)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one, removed)")
    ap.add_argument("--scale", action="store_true",
                    help="the scale benchmark instead: training and evaluation at --sizes products (default 100000,1000000)")
    ap.add_argument("--steps", type=cli.int_at_least(1), default=200, help="--scale: training steps per run (default 200)")
    ap.add_argument("--rounds", type=cli.int_at_least(1), default=3,
                    help="--scale: in-memory / streaming training pairs per size (default 3)")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    cli.setup_logging(a.verbose)
    if a.scale:
        from scalemm.bench.scale import run_scale_bench

        return run_scale_bench(a, ROOT)
    from scalemm.bench.main import run_bench

    return run_bench(a, ROOT / "configs")


if __name__ == "__main__":
    cli.run(main)
