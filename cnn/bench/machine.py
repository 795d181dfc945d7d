"""What the machine under the table can do: its CPU's features, the build of
our kernels that ran, and a practical float32 peak to measure the rows against.

The peak is a BLAS SGEMM (NumPy's matmul of two 1024x1024 float32 matrices on
the run's thread count): what a well-tuned library reaches on this machine
now, cheap to measure (tens of milliseconds) and shared-load aware. It is a
practical peak, below the FMA units' theoretical one, so "% of peak" says how
far a row is from what the machine demonstrably does.
"""
import platform
import statistics
import time

import numpy as np

# The instruction sets the table names, in the order they build on each other.
# NumPy's names (its runtime dispatch), lower-cased when printed.
SHOWN_FEATURES = ("SSE2", "SSE41", "SSE42", "AVX", "FMA3", "AVX2", "AVX512F", "AVX512CD",
                  "AVX512BW", "AVX512DQ", "AVX512VL", "AVX512VNNI", "AVX512_BF16",
                  "ASIMD", "ASIMDHP", "SVE")

# What the compiler targets without -march: the baseline build's instruction set.
BASELINE_ISA = {"x86_64": "SSE2", "AMD64": "SSE2", "aarch64": "ASIMD", "arm64": "ASIMD"}


def cpu_features():
    """The CPU features NumPy detected at import, as a sorted list of its names.

    NumPy 2.x has no public accessor (``np.show_runtime()`` prints them from the
    same dict), so this reads ``numpy._core._multiarray_umath.__cpu_features__``;
    an empty list when a NumPy release moves it.
    """
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return []
    return sorted(name for name, present in __cpu_features__.items() if present)


def kernel_variant():
    """The name of the kernels' build this process runs: "baseline" for now.

    Today every extension is compiled once for the architecture's baseline
    (x86-64: SSE2). When builds for AVX2+FMA and AVX-512 sit next to it and one
    is chosen at import from the CPU's features, return that choice here; the
    machine line, the --json payload and the tests read it from this one place.
    """
    return "baseline"


def variant_line(variant=None, features=None, machine=None):
    """'kernels: baseline (SSE2) build; CPU has avx2 avx512f ...'."""
    variant = kernel_variant() if variant is None else variant
    features = cpu_features() if features is None else features
    machine = platform.machine() if machine is None else machine
    build = f"{variant} ({BASELINE_ISA[machine]})" if variant == "baseline" and \
        machine in BASELINE_ISA else variant
    shown = " ".join(f.lower() for f in SHOWN_FEATURES if f in set(features))
    return f"kernels: {build} build; CPU has {shown or 'none of the features NumPy reports'}"


def sgemm_gflops(threads, n=1024, repeat=5):
    """GFLOP/s of a float32 n x n x n matrix product through NumPy's BLAS on
    ``threads`` threads: 2 n^3 FLOPs over the median of ``repeat`` calls after
    a warm-up."""
    from cnn._blas_threads import blas_threads
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    times = []
    with blas_threads(threads):
        np.matmul(a, b, out=out)
        for _ in range(repeat):
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            times.append(time.perf_counter() - start)
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


def percent_of_peak(gflops, peak):
    """A row's GFLOP/s as a share of the peak's: '48%', '4.8%', or '-' when
    either is unknown."""
    if not gflops or not peak:
        return "-"
    share = 100.0 * gflops / peak
    return f"{share:.0f}%" if share >= 9.5 else f"{share:.1f}%"
