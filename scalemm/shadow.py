"""Keep a folder of this repository from shadowing an installed library of the same name.

Python puts the current folder first on the module path (``python -c``, ``python -m pytest``,
a notebook, Ray's ``--working-dir`` copy on its workers' path) and the running script's folder
first for ``python pipelines/evaluate.py``. From the repository root, ``import evaluate``
would then find the ``evaluate/`` folder (which is ``scalemm.evaluate``, never meant as a
top-level name), and inside ``pipelines/evaluate.py`` it would find the script: Hugging Face's
``evaluate``, which many of our users have installed beside us, would be hidden from their code
and from any library that imports it.

:func:`hand_over`, called by such a folder or script when it finds itself imported under the
top-level name, loads the installed library of that name from the rest of the path in its
place (``sys.modules`` then holds the library, which is what the ``import`` statement returns),
or raises ModuleNotFoundError when no such library is installed. The path is not edited.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def hand_over(name: str, folder: str) -> None:
    """Replace the module being imported as ``name`` by the library ``name`` found on
    ``sys.path`` outside ``folder`` (the path entry that found this repository's copy)."""
    here = os.path.realpath(folder)
    path = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != here]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r} installed (the {name} found in {here} is part "
                                  f"of this repository: import scalemm.{name} for the pipeline's stage)", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
