"""Search a catalogue index: the products most like a catalogue product, or like a new one.

    python pipelines/search.py --index EVAL --checkpoint RUN --id p000042
    python pipelines/search.py --index EVAL --checkpoint RUN --image kettle.jpg --title "Acme 1.7 L kettle"
    python pipelines/search.py --index EVAL --checkpoint RUN --title "steel kettle" --table brand=Acme --k 5 --json

EVAL is the --out folder of pipelines/evaluate.py (or its index/catalogue); RUN the run that
built its vectors (its run directory, its folder of seed-*/ runs, or its .safetensors): another
run's, seed's or step's checkpoint is refused. A new product's media (any subset: --image,
--title, --table, --video, --audio) go through the store's decoders and frozen backbones in
this process (no Ray, no store), then the trained model. Prints a table of rank, id, title,
label and score, or with --json one JSON object (query, results, failures). The logic lives in
search/engine.py.
"""

import argparse
import sys
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli


def main() -> dict | None:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, type=Path, metavar="EVAL",
                    help="evaluation output folder (pipelines/evaluate.py --out) or its index/catalogue")
    ap.add_argument("--checkpoint", required=True, type=Path, metavar="RUN",
                    help="the run that built the catalogue (run directory, seed-*/ folder or .safetensors)")
    ap.add_argument("--id", metavar="PID", help="a catalogue product: its nearest other products")
    ap.add_argument("--image", type=Path, help="a new product's picture")
    ap.add_argument("--title", help="a new product's title")
    ap.add_argument("--table", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="a new product's attributes")
    ap.add_argument("--video", type=Path, help="a new product's video (its sound track is the audio)")
    ap.add_argument("--audio", type=Path, help="a new product's sound")
    ap.add_argument("--k", type=cli.int_at_least(1), default=10, help="neighbours to show (default 10)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    media = a.image or a.title or a.table or a.video or a.audio
    if bool(a.id) == bool(media):
        ap.error("give --id PID, or a new product's --image / --title / --table / --video / --audio (not both)")
    for flag in ("image", "video", "audio"):
        f = getattr(a, flag)
        if f is not None and not f.is_file():
            raise FileNotFoundError(f"--{flag} {f} is not a file")
    cli.setup_logging(a.verbose)
    from scalemm.extract.single import product
    from scalemm.search.engine import Searcher, format_table, parse_table_args

    table = parse_table_args(a.table)
    s = Searcher(a.index, a.checkpoint, a.device)
    failures: list = []
    if a.id:
        query: dict = {"id": a.id}
        hits = s.by_id(a.id, a.k)
    else:
        query = {k: str(v) if isinstance(v, Path) else v for k, v in
                 {"image": a.image, "title": a.title, "table": dict(table) or None, "video": a.video,
                  "audio": a.audio}.items() if v}
        found, failures = s.by_media([product("query", a.title, table, a.image, a.video, a.audio)], a.k)
        hits = found[0]
    if a.json:  # printed by cli.run as the last stdout line
        return {"query": query, "results": [h.to_json() for h in hits], "failures": failures}
    for f in failures:
        print(f"note: the query's {f['modality']} was left out: {f['error']}", file=sys.stderr)
    print(format_table(hits))
    return None


if __name__ == "__main__":
    cli.run(main)
