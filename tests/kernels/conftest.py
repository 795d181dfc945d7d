"""Kernel-test fixtures: the small-case sweep in a child process, and NaN-filled
kernel outputs.

A kernel crash in the sweep stops the run at once with the op and shape that
killed the child: run on in-process, the same bug would abort pytest later with
no word of what failed.
"""
import pytest

from tests.helpers import poison_kernel_outputs
from tests.kernels.test_small_cases import run_small_cases


@pytest.fixture(scope="session")
def small_cases():
    """(crash message or None, failing cases) of tests/kernels/test_small_cases.py."""
    return run_small_cases()


@pytest.fixture(scope="session", autouse=True)
def _kernels_survive_the_small_cases(small_cases):
    crash, _ = small_cases
    if crash:
        pytest.exit(crash, returncode=1)


@pytest.fixture
def nan_outputs(monkeypatch):
    """The compiled kernels' outputs start as NaN: any element left unset shows."""
    poison_kernel_outputs(monkeypatch)
