"""Stage 1: extract frozen backbone features of a corpus into HDF5 feature stores.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/extract.py --corpus data/corpus.jsonl --media-root data --out feats

A CSV or Parquet catalogue (one column per field) is read as well:

    python pipelines/extract.py --corpus catalogue.csv --columns id=sku,title=name,image=img_path \
        --exclude-columns price_history --media-root data --out feats

--columns maps columns to the fields (id, label, instance, title, image, video, audio,
table; a field not mapped reads the column of its own name); every other column becomes a
table attribute unless listed in --exclude-columns.

Without a running cluster it starts a local Ray. The last stdout line is a JSON summary.
One job writes a store at a time (a second one refuses, naming the first); jobs into other
stores on the same cluster wait for each other's CPUs, saying so, up to --wait-timeout.
"""

import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli

ROOT = Path(__file__).resolve().parents[1]


def main() -> dict:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True,
                    help="corpus.jsonl, an M5Product release JSON, or a catalogue .csv / .parquet")
    ap.add_argument("--media-root", help="folder the corpus' media paths are relative to (default: the corpus' folder)")
    ap.add_argument("--out", required=True, help="feature directory to write (resumes if it exists)")
    ap.add_argument("--config", help="extraction YAML (default: configs/offline.yaml)")
    ap.add_argument("--shard-size", type=int, help="items per shard")
    ap.add_argument("--format", default="auto", choices=["auto", "jsonl", "m5product", "csv", "parquet"],
                    help="the corpus' format (default auto: by the file's suffix, else sniffed)")
    ap.add_argument("--columns", metavar="FIELD=COL,...",
                    help="CSV / Parquet: which column holds each field, e.g. id=sku,title=name,image=img_path")
    ap.add_argument("--exclude-columns", metavar="COL,...",
                    help="CSV / Parquet: columns left out of the table attributes")
    ap.add_argument("--address", help="Ray address (default: the job's cluster, or a local Ray)")
    ap.add_argument("--wait-timeout", type=float, metavar="S",
                    help="give up after S seconds without progress: waiting for the CPUs other jobs hold, or "
                         "for the next shard (default: $SCALE_WAIT_TIMEOUT, else 600; 0: wait for ever)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    cli.setup_logging(a.verbose)
    from scalemm.corpus import TableFormat, parse_columns
    from scalemm.extract.config import load_config
    from scalemm.extract.job import run_extraction
    from scalemm.ray_address import check_ray_address

    check_ray_address(a.address)
    cfg = load_config(a.config or ROOT / "configs" / "offline.yaml", shard_size=a.shard_size)
    media_root = a.media_root or str(Path(a.corpus).resolve().parent)
    fmt = a.format
    if a.columns or a.exclude_columns or fmt in ("csv", "parquet"):
        exclude = [c.strip() for c in (a.exclude_columns or "").split(",") if c.strip()]
        fmt = TableFormat(fmt, parse_columns(a.columns), exclude)
    return run_extraction(a.corpus, media_root, a.out, cfg, address=a.address, fmt=fmt,
                          wait_timeout=a.wait_timeout).summary()


if __name__ == "__main__":
    cli.run(main)
