"""Stage 1: extract frozen backbone features of a corpus into HDF5 feature stores.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/extract.py --corpus data/corpus.jsonl --media-root data --out feats

Without a running cluster it starts a local Ray. The last stdout line is a JSON summary.
"""

import argparse

import _cli


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="corpus.jsonl or an M5Product release JSON")
    ap.add_argument("--media-root", help="folder the corpus' media paths are relative to (default: the corpus' folder)")
    ap.add_argument("--out", required=True, help="feature directory to write (resumes if it exists)")
    ap.add_argument("--config", help="extraction YAML (default: configs/offline.yaml)")
    ap.add_argument("--shard-size", type=int, help="items per shard")
    ap.add_argument("--format", default="auto", choices=["auto", "jsonl", "m5product"])
    ap.add_argument("--address", help="Ray address (default: the job's cluster, or a local Ray)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    _cli.setup_logging(a.verbose)
    from pathlib import Path

    from extract.config import load_config
    from extract.job import run_extraction

    _cli.check_ray_address(a.address)
    cfg_path = a.config or (_cli.ROOT / "configs" / "offline.yaml")
    cfg = load_config(cfg_path, shard_size=a.shard_size)
    media_root = a.media_root or str(Path(a.corpus).resolve().parent)
    _cli.prepare_ray_driver()
    return run_extraction(a.corpus, media_root, a.out, cfg, address=a.address, fmt=a.format).summary()


if __name__ == "__main__":
    _cli.run(main)
