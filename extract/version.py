"""The version of the code that shapes features, recorded in every store's provenance.

A change to any of these modules may change feature values, so it changes the version and
stores extracted before it no longer join with stores extracted after, and a grown corpus is
not appended to a store extracted by other code. Tooling (corpus makers, benchmarks, the
job's scan, plan and scheduling, the model actor's plumbing) is left out on purpose. The
backbone registry (``specs.py``) is in: its builders choose each backbone's settings.
"""

from __future__ import annotations

from pathlib import Path

import scalemm.corpus
import scalemm.store.format

_HERE = Path(__file__).resolve().parent
FEATURE_MODULES = (_HERE / "backbones.py", _HERE / "specs.py", _HERE / "config.py", _HERE / "decode.py",
                   _HERE / "decoding.py", _HERE / "encode.py", _HERE / "shard.py", Path(scalemm.corpus.__file__),
                   Path(scalemm.store.format.__file__))


def feature_code_version() -> str:
    """Package version plus a hash of :data:`FEATURE_MODULES`."""
    from scalemm.store import sources_version

    return sources_version(FEATURE_MODULES)
