"""Shared test configuration: deterministic, quiet, no network, one intra-op thread.

The test models are tiny: with several intra-op threads on a 2-core (often shared)
machine, thread hand-offs cost more than the arithmetic (measured up to 75x slower for
small attack batches), so the suite and its subprocesses run one thread each.
"""
import os

os.environ.setdefault("ABSTAIN_QUIET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
