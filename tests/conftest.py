"""Shared test configuration: deterministic, quiet, no network."""
import os

import pytest
import torch

os.environ.setdefault("ABSTAIN_QUIET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
