"""A local search page over a catalogue index: upload a picture and / or type a title, or click a product.

    python pipelines/serve.py --index EVAL --checkpoint RUN              # http://127.0.0.1:8765/
    python pipelines/serve.py --index EVAL --checkpoint RUN --port 9000 --k 20

EVAL is the --out folder of pipelines/evaluate.py (or its index/catalogue), RUN the run that
built its vectors (another run's checkpoint is refused), as for pipelines/search.py. The page
shows each neighbour's picture, id, title, label and score; a click on one searches from it.
It listens on 127.0.0.1 only unless --host says otherwise (there is no login: expose it only
behind your own proxy), serves no file outside the catalogue's media root (404), refuses
uploads over --max-upload-mb (413) and unpickles nothing. It prints its URL, then serves until
Ctrl-C. The page lives in search/page.py (Starlette, plain HTML, no JavaScript), served by uvicorn.
"""

import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli


def main() -> None:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, type=Path, metavar="EVAL",
                    help="evaluation output folder (pipelines/evaluate.py --out) or its index/catalogue")
    ap.add_argument("--checkpoint", required=True, type=Path, metavar="RUN",
                    help="the run that built the catalogue (run directory, seed-*/ folder or .safetensors)")
    ap.add_argument("--port", type=cli.int_at_least(1), default=8765, help="port (default 8765)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--k", type=cli.int_at_least(1), default=10, help="neighbours per query (default 10)")
    ap.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (default 10 MB)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    cli.setup_logging(a.verbose)
    import uvicorn

    from scalemm.search.engine import Searcher
    from scalemm.search.page import make_app

    searcher = Searcher(a.index, a.checkpoint, a.device)
    app = make_app(searcher, a.k, int(a.max_upload_mb * (1 << 20)))
    host = f"[{a.host}]" if ":" in a.host else a.host
    print(f"search page for {searcher.catalogue.index_dir} ({len(searcher.catalogue.ids)} products): "
          f"http://{host}:{a.port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="info" if a.verbose else "warning")


if __name__ == "__main__":
    cli.run(main)
