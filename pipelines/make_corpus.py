"""Make the built-in demo corpus.

    python pipelines/make_corpus.py --out DIR --items N --seed S [--workers W] [--check]

Writes DIR/corpus.jsonl, the media under DIR/{images,videos,audio}/ and DIR/corpus_stats.json
(see extract/demo_corpus.py). The last line on stdout is the stats summary as one JSON line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

log = logging.getLogger("make_corpus")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        print(f"make_corpus: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}")
        return n
    return parse


_positive = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "a non-negative integer")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(description="Make the synthetic demo product corpus (images, videos, audio, titles, tables).")
    p.add_argument("--out", required=True, type=Path, help="output directory (created; an earlier demo corpus there is replaced)")
    p.add_argument("--items", required=True, type=_positive, help="number of products")
    p.add_argument("--seed", default=0, type=_seed, help="random seed (default 0)")
    p.add_argument("--workers", default=None, type=_positive, help="worker processes (default: up to 2)")
    p.add_argument("--check", action="store_true", help="decode every media file afterwards and compare with the stats")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from extract.demo_corpus import DemoCorpusError, check_corpus, make_corpus

    t0 = time.perf_counter()
    try:
        stats = make_corpus(args.out, args.items, args.seed, workers=args.workers, progress=not args.quiet)
    except (DemoCorpusError, OSError) as e:
        print(f"make_corpus: error: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    log.info("made %d products in %.1f s", stats["n_items"], elapsed)
    summary = {k: stats[k] for k in ("seed", "n_items", "n_categories", "n_instances", "instance_listings",
                                     "modalities", "totals", "category_sizes")}
    summary = {"out": str(args.out), **summary, "seconds": round(elapsed, 2)}
    mismatches: list[str] = []
    if args.check:
        mismatches = check_corpus(args.out)["mismatches"]
        for m in mismatches:
            log.error("check: %s", m)
        summary["check"] = mismatches or "ok"
    print(json.dumps(summary), flush=True)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
