"""How a figure is timed: medians of repeated calls after a warm-up.

Every figure of ``python -m cnn.bench`` is a median (robust to the odd slow
call of a shared machine), and every timer warms up first (caches, thread
pools, lazy imports).
"""
import statistics
import time


def median_ms(fn, repeat, min_time=0.2):
    """Median wall time of fn() in ms, after one warm-up call.

    Repeats at least ``repeat`` times and until ``min_time`` seconds have passed.
    """
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 200):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def interleaved_ms(fns, rounds, per_round):
    """Median ms of each fn, timed in alternating rounds so that a change in the
    machine's load hits every fn alike."""
    for fn in fns:
        fn()
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e3 for t in times]


def epoch_seconds(step, steps_per_epoch, sample_steps, full_epoch):
    """Seconds of one epoch of ``step()``: the median of ``sample_steps`` steps
    times ``steps_per_epoch``, or with ``full_epoch`` the whole epoch timed."""
    step()
    step()
    if full_epoch:
        start = time.perf_counter()
        for _ in range(steps_per_epoch):
            step()
        return time.perf_counter() - start
    times = []
    for _ in range(sample_steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * steps_per_epoch
