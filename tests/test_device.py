"""scalemm.device: the device a setting names, and torch's CPU threads set for a block of work."""

from __future__ import annotations

import pytest
import torch

from scalemm.device import resolve_device, torch_threads
from scalemm.errors import ConfigError


def test_torch_threads_sets_them_for_the_block_and_restores_them_even_on_error() -> None:
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(other):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0: left as they are
        assert torch.get_num_threads() == before


def test_resolve_device_names_what_is_wrong() -> None:
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
