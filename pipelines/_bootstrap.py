"""Start-up of every script in pipelines/ (``import _bootstrap`` first; Python finds it because
a script's own folder is first on its path).

The scripts need the project installed as the ``scalemm`` package (``make setup``, or
``pip install -e .`` in your environment; on a Ray cluster, on every node). Without it they
end with one line that says so instead of an import traceback. No path is edited here: the
stages are always imported as ``scalemm.<stage>``, so the scripts' names (extract.py,
evaluate.py) shadow nothing.
"""

import sys

try:
    import scalemm.cli
except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
    if e.name != "scalemm" and not str(e.name or "").startswith("scalemm."):
        raise
    sys.exit(f"error: the scalemm package is not installed in this Python ({sys.executable}); "
             f"run `make setup` and use .venv/bin/python, or `pip install -e .` in your environment")

scalemm.cli.apply_offline_env()
