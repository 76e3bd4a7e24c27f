"""Hugging Face's `evaluate` (in the dev extra, so this whole suite runs beside it) and the
project in one environment: `import evaluate` is always Hugging Face's module, from the
repository root and inside `python pipelines/evaluate.py` too, while the pipeline's stage is
`scalemm.evaluate` and every command keeps working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_output import last_json

ROOT = Path(__file__).resolve().parents[1]
SITE = "site-packages"


def py(code: str, cwd: Path = ROOT, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def check_hf_and_ours(where: str) -> str:
    return f"""
import evaluate, importlib.metadata as md
assert callable(evaluate.load) and callable(evaluate.combine), evaluate.__file__
assert "{SITE}" in evaluate.__file__, evaluate.__file__
import scalemm.evaluate.run as run
assert callable(run.run_evaluation) and "{SITE}" not in run.__file__
import evaluate as again
assert again is evaluate
print("{where}", md.version("evaluate"), evaluate.__file__)
"""


def test_import_evaluate_is_hugging_faces_from_the_repository_root():
    # the repository root is first on the path here, and it has an evaluate/ folder
    p = py(check_hf_and_ours("root"))
    assert p.returncode == 0 and p.stdout.startswith("root 0.4."), p.stderr[-3000:]


def test_import_evaluate_is_hugging_faces_inside_the_evaluate_script(tmp_path):
    # what a library in `python pipelines/evaluate.py` sees: the script's folder first on the path
    code = "import sys; sys.path.insert(0, sys.argv[1])\n" + check_hf_and_ours("script")
    p = py(code, tmp_path, str(ROOT / "pipelines"))
    assert p.returncode == 0 and p.stdout.startswith("script 0.4."), p.stderr[-3000:]


def test_commands_work_beside_hugging_faces_evaluate(extracted, tmp_path):
    feats, stats = extracted
    assert py("import evaluate; evaluate.load").returncode == 0  # installed here (dev extra)
    h = subprocess.run([sys.executable, str(ROOT / "pipelines" / "evaluate.py"), "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert h.returncode == 0 and "--checkpoint" in h.stdout and "--rebuild-index" in h.stdout, h.stderr
    s = subprocess.run([sys.executable, str(ROOT / "pipelines" / "store_info.py"), str(feats)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert s.returncode == 0, s.stderr
    assert last_json(s.stdout)["items"] == stats.items


def test_hand_over_loads_the_installed_library_or_says_it_is_missing(tmp_path):
    """scalemm.shadow on a folder that shadows a library that is installed (yaml) and on one
    that shadows nothing."""
    for name in ("yaml", "no_such_library_xyz"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            "import os\nfrom scalemm.shadow import hand_over\n"
            "hand_over(__name__, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))\n")
    p = py("import yaml; print(yaml.__file__, yaml.safe_load('a: 1'))", tmp_path)
    assert p.returncode == 0 and SITE in p.stdout and "{'a': 1}" in p.stdout, p.stderr
    p = py("import no_such_library_xyz", tmp_path)
    assert p.returncode == 1 and "ModuleNotFoundError: No module named 'no_such_library_xyz' installed" in p.stderr


@pytest.mark.parametrize("name", ["extract", "fuse", "evaluate", "corpora", "bench"])
def test_stage_folders_are_not_installed_as_top_level_packages(name, tmp_path):
    p = py(f"import importlib.util as u; s = u.find_spec({name!r}); print(s and s.origin)", tmp_path)
    assert p.returncode == 0 and str(ROOT / name) not in p.stdout, p.stdout
