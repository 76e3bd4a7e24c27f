"""Shared fixtures: a small demo corpus made by the real corpus maker, and offline settings."""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

import pytest

from scalemm.cli import apply_offline_env

ROOT = Path(__file__).resolve().parents[1]
apply_offline_env()


@pytest.fixture(scope="session", autouse=True)
def private_ray_token(tmp_path_factory: pytest.TempPathFactory):
    """Every Ray the tests start (``ray.init()`` of a local cluster, pipelines/extract.py without
    --address) uses a token of this session, never ~/.ray (see scalemm.ray_head.private_token)."""
    from scalemm.ray_head import private_token

    with private_token(tmp_path_factory.mktemp("ray-token")) as token:
        yield token


@pytest.fixture(scope="module")
def one_faiss_thread():
    """FAISS on one OpenMP thread for a test module: deterministic HNSW construction, and no
    OpenMP spinning on a shared 2-core machine (``pytestmark = pytest.mark.usefixtures(...)``)."""
    import faiss

    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(prev)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-item demo corpus (with corrupt and missing media) shared by the extraction tests."""
    from scalemm.corpora.demo import make_corpus

    out = tmp_path_factory.mktemp("corpus")
    make_corpus(out, 32, seed=3)
    return out


@pytest.fixture(scope="session")
def tiny_config():
    from scalemm.extract.config import load_config

    return load_config(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def extracted(demo_corpus: Path, tiny_config, tmp_path_factory: pytest.TempPathFactory):
    """The demo corpus extracted with tiny backbones through a local Ray (in process)."""
    import ray

    from scalemm.extract.job import run_extraction

    out = tmp_path_factory.mktemp("feats")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        stats = run_extraction(demo_corpus / "corpus.jsonl", demo_corpus, out, tiny_config)
    finally:
        ray.shutdown()
    return out, stats


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run a pipelines/ script as ``python pipelines/<script> ARGS`` would, but in this process
    (the imports are paid once): its ``__main__`` block runs, SystemExit gives the exit code,
    and an exception escaping the script fails the test (the user would see a traceback)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("SCALE_DEBUG", raising=False)
    monkeypatch.syspath_prepend(str(ROOT / "pipelines"))

    def call(script: str, *args: str) -> tuple[int, str, str, float]:
        monkeypatch.setattr(sys, "argv", [str(ROOT / "pipelines" / script), *args])
        capsys.readouterr()
        t0 = time.time()
        try:
            runpy.run_path(str(ROOT / "pipelines" / script), run_name="__main__")
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return rc, out, err, time.time() - t0

    return call
