"""Make a corpus: the synthetic demo corpus, or the real-media clipart development corpus.

    python pipelines/make_corpus.py --out DIR --items N --seed S [--workers W] [--check]
    python pipelines/make_corpus.py --kind clipart --out DIR [--items 1200] [--seed S]
        [--categories a/b,c/d] [--clipart-root /usr/share/openclipart/png] [--check]

Writes DIR/corpus.jsonl, the media under DIR/{images,videos,audio}/ and DIR/corpus_stats.json
(see corpora/writer.py, corpora/demo.py and corpora/clipart.py; the clipart corpus needs the
Debian packages openclipart-png and espeak-ng). The last line on stdout is the stats summary
as one JSON line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli
from scalemm.errors import UserError


class CorpusCheckFailed(UserError):
    """--check found media that do not decode as the stats say."""

log = logging.getLogger("make_corpus")


def main() -> dict:
    p = cli.ArgumentParser(description="Make a product corpus (images, videos, audio, titles, tables): the synthetic "
                                       "demo corpus or the real-media clipart development corpus.")
    p.add_argument("--kind", choices=("demo", "clipart"), default="demo", help="which corpus (default demo)")
    p.add_argument("--out", required=True, type=Path,
                   help="output directory (created; an earlier corpus of the same kind there is replaced)")
    p.add_argument("--items", type=cli.int_at_least(1),
                   help="number of products (required for demo; clipart default 1200)")
    p.add_argument("--seed", default=0, type=cli.int_at_least(0), help="random seed (default 0)")
    p.add_argument("--workers", default=None, type=cli.int_at_least(1), help="worker processes (default: up to 2)")
    p.add_argument("--check", action="store_true", help="decode every media file afterwards and compare with the stats")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument("--categories", help="clipart: comma-separated category folders (default: the development list)")
    p.add_argument("--clipart-root", type=Path,
                   help="clipart: folder of the openclipart PNGs (default /usr/share/openclipart/png)")
    args = p.parse_args()
    if args.kind == "demo" and (args.categories or args.clipart_root):
        p.error("--categories and --clipart-root are for --kind clipart")
    if args.kind == "demo" and args.items is None:
        p.error("--items is required for --kind demo")
    cli.setup_logging(level="WARNING" if args.quiet else "INFO")
    from scalemm.corpora.demo import make_corpus
    from scalemm.corpora.writer import decode_check

    t0 = time.perf_counter()
    if args.kind == "clipart":
        from scalemm.corpora import clipart

        kw = {"root": args.clipart_root or clipart.DEFAULT_ROOT}
        if args.categories:
            kw["categories"] = [c.strip().strip("/") for c in args.categories.split(",") if c.strip()]
        stats = clipart.make_corpus(args.out, args.items or clipart.DEFAULT_ITEMS, args.seed, workers=args.workers,
                                    progress=not args.quiet, **kw)
    else:
        stats = make_corpus(args.out, args.items, args.seed, workers=args.workers, progress=not args.quiet)
    elapsed = time.perf_counter() - t0
    log.info("made %d products in %.1f s", stats["n_items"], elapsed)
    summary = {k: stats[k] for k in ("seed", "n_items", "n_categories", "n_instances", "instance_listings",
                                     "modalities", "totals", "category_sizes")}
    summary = {"out": str(args.out), **summary, "seconds": round(elapsed, 2)}
    if args.check:
        mismatches = decode_check(args.out)["mismatches"]
        for m in mismatches:
            log.error("check: %s", m)
        if mismatches:
            raise CorpusCheckFailed(f"{len(mismatches)} media file(s) do not decode as corpus_stats.json says "
                                    f"(first: {mismatches[0]})")
        summary["check"] = "ok"
    return summary


if __name__ == "__main__":
    cli.run(main)
