"""Shared fixtures: a small demo corpus made by the real corpus maker, and offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# the entry points' start-up: repository root first on sys.path, offline model hubs
from pipelines._cli import ROOT

os.environ.setdefault("RAY_AUTH_MODE", "token")


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
    from extract.demo_corpus import make_corpus

    out = tmp_path_factory.mktemp("corpus")
    make_corpus(out, 32, seed=3)
    return out


@pytest.fixture(scope="session")
def tiny_config():
    from extract.config import load_config

    return load_config(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def extracted(demo_corpus: Path, tiny_config, tmp_path_factory: pytest.TempPathFactory):
    """The demo corpus extracted with tiny backbones through a local Ray (in process)."""
    import ray

    from extract.job import run_extraction

    out = tmp_path_factory.mktemp("feats")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        stats = run_extraction(demo_corpus / "corpus.jsonl", demo_corpus, out, tiny_config)
    finally:
        ray.shutdown()
    return out, stats
