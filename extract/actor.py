"""The model actor of the extraction job: it holds the loaded backbones, encodes whole shards
and writes them itself.

The driver hands it one shard at a time: the shard's plan (ids and fingerprints, row order)
and the object refs of its decode tasks, which Ray resolves on the actor's node. The actor
encodes the shard, writes its five modality files and then its failure part (the commit) to
the store folder, and returns a few numbers. Feature tensors never reach the driver, so the
driver's network link and CPU stay out of the data path however many actors there are.

The store folder must be one every actor sees under the same path: a local folder on one
machine; on a cluster, a shared file system (NFS, Lustre, a FUSE-mounted bucket) mounted at
the same path on every node.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from scalemm import store
from scalemm.errors import errno_of
from scalemm.extract.config import ExtractConfig
from scalemm.extract.shard import commit, shard_contents, write_modalities

# provenance fields an actor checks against its own backbones before it writes anything
CHECKED = ("backbone", "weights_hash", "pretrained", "preprocessing", "dim", "pooled_dim", "max_tokens")


def _quiet_unraisable(u: Any) -> None:
    """The actor's unraisable-exception hook: when a write fails for the machine (a full disk),
    h5py's objects fail again as they are freed, each printing a traceback (through
    :func:`sys.excepthook`, then this hook) that Ray sends to the driver's console; the write's
    own error already says it all (it reaches the driver as one line), so those are dropped.
    Anything else is printed as usual."""
    if u.exc_value is not None and errno_of(u.exc_value) is not None:
        return
    sys.__unraisablehook__(u)


def _quiet_excepthook(kind: type, value: BaseException, tb: Any) -> None:
    if errno_of(value) is not None:
        return
    sys.__excepthook__(kind, value, tb)


class ShardEncoder:
    """Ray actor (see the module docstring)."""

    def __init__(self, cfg_dict: dict[str, Any], threads: int, out: str) -> None:
        import torch

        from scalemm.extract.encode import Backbones

        torch.set_num_threads(max(1, threads))
        sys.unraisablehook, sys.excepthook = _quiet_unraisable, _quiet_excepthook
        self.out = Path(out)
        self._raylet = os.getppid()
        # an error loading the backbones (a missing weights file) is raised by the first call,
        # where Ray keeps its type and message; an actor that fails in __init__ only says it died
        self._error: Exception | None = None
        try:
            self.backbones = Backbones(ExtractConfig(**cfg_dict))
            self._infos = self.backbones.infos()
        except Exception as e:
            self._error = e

    def infos(self) -> dict[str, dict[str, Any]]:
        """Per modality: spec, dims, pretrained, weights hash, preprocessing (the provenance)."""
        if self._error is not None:
            raise self._error
        return self._infos

    def _orphaned(self) -> None:
        """Stop, without committing, when this actor's raylet is gone (its node was killed with
        its job): Ray puts workers in process groups of their own, so a ``kill -9`` of the job's
        process group leaves them running until they notice, and a shard they finished then
        would be committed after the kill. A job killed on purpose loses its shards in flight."""
        if os.getppid() != self._raylet:
            os._exit(1)

    def _check(self, provs: dict[str, store.Provenance]) -> None:
        for m, prov in provs.items():
            mine = {"backbone": self._infos[m]["spec"], **{k: self._infos[m][k] for k in CHECKED if k != "backbone"}}
            bad = [k for k in CHECKED if getattr(prov, k) != mine[k]]
            if bad:
                raise RuntimeError(f"the model actor on {socket.gethostname()} has other {m} backbones than the "
                                   f"store ({bad[0]}: {mine[bad[0]]!r} vs {getattr(prov, bad[0])!r}); give every "
                                   f"node the same weights files")

    def write(self, shard: int, ids: list[str], fingerprints: list[str], provs_json: dict[str, dict[str, Any]],
              *chunks: list[dict[str, Any]]) -> dict[str, Any]:
        """Encode shard ``shard`` from its decoded chunks (in row order) and write it."""
        import ray

        provs = {m: store.Provenance.from_json(p) for m, p in provs_json.items()}
        self.infos()
        self._check(provs)
        items = [it for chunk in chunks for it in chunk]
        got = [it["id"] for it in items]
        if got != list(ids):
            raise RuntimeError(f"shard {shard}: the decoded products {got[:3]}... are not the planned "
                               f"{list(ids)[:3]}...; the corpus changed during extraction, rerun")
        results = self.backbones.encode_rows(items)
        data, failures = shard_contents(shard, items, results, list(fingerprints), provs)
        self._orphaned()
        nbytes = write_modalities(self.out, shard, data, provs)
        self._orphaned()
        commit(self.out, shard, failures)
        return {"shard": shard, "items": len(items), "bytes": nbytes, "failures": len(failures),
                "node": ray.get_runtime_context().get_node_id()}
