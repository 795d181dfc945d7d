"""The thread policy (cnn._threads.threads_for) and the kernels that follow it."""
import os

import pytest

from cnn import _threads
from cnn._threads import (
    GEMM_WORK_PER_THREAD,
    MIN_WORK_PER_THREAD,
    POOL_WORK_PER_THREAD,
    RELU_WORK_PER_THREAD,
    forward_split,
    split_threads,
    threads_for,
)

THREADS = (None, 1, 2, 3, 4, 8)


@pytest.fixture(autouse=True)
def four_default_threads(monkeypatch):
    monkeypatch.setattr(_threads, "_default", 4)


def test_threads_for_caps_by_threads_and_by_work():
    assert threads_for(None, 10 * MIN_WORK_PER_THREAD) == 4          # the default
    assert threads_for(2, 10 * MIN_WORK_PER_THREAD) == 2
    assert threads_for(8, 3 * MIN_WORK_PER_THREAD + 1) == 3           # one per min_work
    assert threads_for(8, MIN_WORK_PER_THREAD - 1) == 1               # never zero
    assert threads_for(8, 0) == 1
    assert threads_for(8, 5 * GEMM_WORK_PER_THREAD, GEMM_WORK_PER_THREAD) == 5
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        threads_for(0, 100)


def test_split_threads_gives_leftover_threads_to_blas():
    assert split_threads(4, 10) == (4, 1)
    assert split_threads(4, 1) == (1, 4)
    assert split_threads(5, 2) == (2, 2)
    assert split_threads(3, 0) == (1, 3)


def test_forward_split_cuts_filters_only_for_small_batches_and_big_enough_work():
    big = 288 * 28 * 30                                   # convnet's conv2, per filter
    assert forward_split(3, 1, 64, big) == (3, 3)         # one image: a block per thread
    assert forward_split(4, 8, 64, big) == (1, 4)         # enough images: no cut
    assert forward_split(4, 1, 64, 9) == (1, 1)           # too little work to share
    assert forward_split(8, 1, 2, GEMM_WORK_PER_THREAD) == (2, 2)   # a filter per block, no less
    worth = 2 * GEMM_WORK_PER_THREAD // 64                # exactly two blocks' worth
    assert forward_split(4, 1, 64, worth) == (2, 2)


@pytest.mark.parametrize("threads", THREADS)
def test_compiled_kernels_follow_the_policy(threads):
    """dense's GEMM split, relu's and pooling's loops are threads_for with the
    kernel's own minimum work (the constants in cnn._threads)."""
    dense = pytest.importorskip("cnn._dense")
    relu = pytest.importorskip("cnn._relu")
    pool = pytest.importorskip("cnn._pool")
    for n, d, m in [(1, 128, 10), (1, 3136, 128), (64, 3136, 128), (256, 1024, 1024)]:
        assert dense._gemm_threads(threads, n, d, m) == \
            threads_for(threads, n * d * m, GEMM_WORK_PER_THREAD), (n, d, m)
    grain = RELU_WORK_PER_THREAD
    for size in (0, 1000, grain, 3 * grain + 5, 100 * grain):
        assert relu._loop_threads(threads, size) == threads_for(threads, size, RELU_WORK_PER_THREAD)
    for planes, size in [(1, 10**6), (3, 10**6), (64, 1000), (64, 10**6), (640, 10**7)]:
        assert pool._loop_threads(threads, planes, size) == \
            min(threads_for(threads, size, POOL_WORK_PER_THREAD), planes), (planes, size)


@pytest.mark.parametrize("policy, spinning", [(None, False), ("PASSIVE", False),
                                              ("ACTIVE", True), (" active ", True)])
def test_spinning_threads_take_smaller_gemm_shares(policy, spinning):
    """OMP_WAIT_POLICY=ACTIVE (the user's choice; cnn defaults to PASSIVE) makes
    waking a thread cheap, so a sixteenth of the GEMM work is worth a second one:
    convnet's second layer on one image is then cut into filter blocks."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    code = ("import cnn._threads as t, cnn._dense as d; "
            "print(t.SPINNING, t.GEMM_WORK_PER_THREAD, d.GEMM_WORK_PER_THREAD, "
            "t.forward_split(2, 1, 64, 288 * 14 * 16)[0])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    size = 1 << 18 if spinning else 1 << 22
    assert out == [str(spinning), str(size), str(size), "2" if spinning else "1"]
