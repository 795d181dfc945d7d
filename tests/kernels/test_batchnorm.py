"""batchnorm2d: the three backends against each other, the running statistics,
numerical gradients in both modes, thread-count independence, and bad inputs."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from cnn.backends import get_backend
from tests.helpers import assert_close, check_gradients, compare_backends

BACKENDS = ("cython", "python", "naive")
GRAD_NAMES = ("dx", "dgamma", "dbeta")


def make_inputs(shape, dtype, seed=0, loc=0.0, scale=1.0):
    """x, gamma, beta, running_mean, running_var of ``dtype`` for x of ``shape``."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype) * rng.choice([-1, 1], C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    running_mean = rng.standard_normal(C).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, C).astype(dtype)
    return x, gamma, beta, running_mean, running_var


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 4), C=st.integers(1, 4), H=st.integers(1, 5), W=st.integers(1, 5),
       dtype=st.sampled_from([np.float32, np.float64]), training=st.booleans(),
       momentum=st.floats(0.0, 1.0), eps=st.sampled_from([1e-5, 1e-3, 0.5]),
       seed=st.integers(0, 2**16))
@example(N=1, C=3, H=1, W=1, dtype=np.float64, training=True, momentum=0.1, eps=1e-5, seed=1)
@example(N=1, C=3, H=1, W=1, dtype=np.float32, training=False, momentum=0.1, eps=1e-5, seed=1)
@example(N=5, C=2, H=1, W=1, dtype=np.float32, training=True, momentum=0.3, eps=1e-5, seed=2)
@example(N=1, C=3, H=5, W=3, dtype=np.float64, training=True, momentum=1.0, eps=1e-5, seed=3)
@example(N=3, C=5, H=7, W=3, dtype=np.float32, training=True, momentum=0.0, eps=1e-5, seed=4)
def test_backends_agree(N, C, H, W, dtype, training, momentum, eps, seed):
    # compare_backends also checks that the running statistics, updated in
    # place, end up equal on every backend.
    args = make_inputs((N, C, H, W), dtype, seed, loc=0.5, scale=2.0)
    compare_backends("batchnorm2d", args,
                     dict(training=training, momentum=momentum, eps=eps),
                     backends=BACKENDS, seed=seed, grad_names=GRAD_NAMES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_stats_update(backend, dtype):
    bn = get_backend(backend)
    x, gamma, beta, rm, rv = make_inputs((3, 4, 5, 2), dtype, seed=5, loc=1.0, scale=3.0)
    rm0, rv0 = rm.copy(), rv.copy()
    momentum = 0.25
    out, _ = bn.batchnorm2d_forward(x, gamma, beta, rm, rv, momentum=momentum)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    unbiased = x64.var(axis=(0, 2, 3), ddof=1)
    assert rm.dtype == dtype and rv.dtype == dtype
    assert_close(rm, (1 - momentum) * rm0 + momentum * mean, dtype, "running_mean")
    assert_close(rv, (1 - momentum) * rv0 + momentum * unbiased, dtype, "running_var")
    # The output is normalised with the biased batch variance.
    biased = x64.var(axis=(0, 2, 3))
    expected = (gamma[:, None, None] * (x64 - mean[:, None, None])
                / np.sqrt(biased[:, None, None] + 1e-5) + beta[:, None, None])
    assert_close(out, expected, dtype, "training output")


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_uses_running_stats_without_update(backend):
    bn = get_backend(backend)
    x, gamma, beta, rm, rv = make_inputs((2, 3, 4, 4), np.float64, seed=6)
    rm0, rv0 = rm.copy(), rv.copy()
    out, _ = bn.batchnorm2d_forward(x, gamma, beta, rm, rv, training=False, eps=1e-3)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    expected = (gamma[:, None, None] * (x - rm0[:, None, None])
                / np.sqrt(rv0[:, None, None] + 1e-3) + beta[:, None, None])
    assert_close(out, expected, np.float64, "eval output")


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_value_per_channel_uses_biased_variance(backend):
    # m = N*H*W = 1: the unbiased correction is undefined, the biased variance (0) is used.
    bn = get_backend(backend)
    x, gamma, beta, rm, rv = make_inputs((1, 3, 1, 1), np.float64, seed=7)
    rm0, rv0 = rm.copy(), rv.copy()
    out, cache = bn.batchnorm2d_forward(x, gamma, beta, rm, rv, momentum=0.5)
    assert np.all(np.isfinite(rv))
    assert_close(rv, 0.5 * rv0, np.float64, "running_var")
    assert_close(rm, 0.5 * rm0 + 0.5 * x.reshape(-1), np.float64, "running_mean")
    assert_close(out, np.broadcast_to(beta[None, :, None, None], out.shape), np.float64, "out")
    dx, dgamma, dbeta = bn.batchnorm2d_backward(np.ones_like(out), cache)
    assert_close(dx, np.zeros_like(x), np.float64, "dx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 3, 2), (4, 2, 1, 1), (1, 2, 3, 3)])
def test_numerical_gradients(backend, training, shape):
    bn = get_backend(backend)
    x, gamma, beta, rm, rv = make_inputs(shape, np.float64, seed=8)

    def forward(x, gamma, beta):
        # Fresh running statistics on every call: forward updates them in place.
        return bn.batchnorm2d_forward(x, gamma, beta, rm.copy(), rv.copy(),
                                      training=training, eps=1e-3)

    check_gradients(forward, bn.batchnorm2d_backward, [x, gamma, beta], wrt=(0, 1, 2),
                    seed=9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_thread_count_does_not_change_results(dtype, training):
    bn = get_backend("cython")
    args = make_inputs((16, 8, 40, 41), dtype, seed=10, loc=2.0)  # big enough for 4 threads
    dout = np.random.default_rng(11).standard_normal(args[0].shape).astype(dtype)
    results = []
    for threads in (1, 2, 4):
        x, gamma, beta, rm, rv = (a.copy() for a in args)
        out, cache = bn.batchnorm2d_forward(x, gamma, beta, rm, rv, training=training,
                                            threads=threads)
        grads = bn.batchnorm2d_backward(dout, cache, threads=threads)
        results.append((out, *grads, rm, rv))
    # Each channel is summed by one thread in a fixed order: bit-for-bit equal.
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_output_has_mean_beta_and_std_gamma(backend, dtype):
    bn = get_backend(backend)
    x, _, beta, rm, rv = make_inputs((8, 4, 6, 6), dtype, seed=12, loc=3.0, scale=5.0)
    gamma = np.array([0.5, 1.0, 2.0, 3.0], dtype=dtype)
    out, _ = bn.batchnorm2d_forward(x, gamma, beta, rm, rv, training=True)
    out64 = out.astype(np.float64)
    np.testing.assert_allclose(out64.mean(axis=(0, 2, 3)), beta, atol=1e-5)
    np.testing.assert_allclose(out64.std(axis=(0, 2, 3)), gamma, rtol=1e-4)


def test_float32_large_mean_is_accurate():
    # Sums in double and a two-pass variance: a large offset must not cost accuracy.
    bn = get_backend("cython")
    x, gamma, beta, rm, rv = make_inputs((16, 3, 16, 16), np.float32, seed=13, loc=1e4)
    out, cache = bn.batchnorm2d_forward(x, gamma, beta, rm, rv)
    ref = get_backend("python")
    args64 = [a.astype(np.float64) for a in (x, gamma, beta, rm, rv)]
    out64, _ = ref.batchnorm2d_forward(*args64)
    # The float32 inputs are exact in float64 too, so only the output's float32
    # rounding may differ; float32 sums of 1e4-sized values would be off by ~1e-2.
    np.testing.assert_allclose(out, out64, rtol=0, atol=1e-6 * np.abs(out64).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    bn = get_backend(backend)
    x, gamma, beta, rm, rv = make_inputs((3, 4, 5, 6), np.float64, seed=14)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not xt.flags.c_contiguous
    out, _ = bn.batchnorm2d_forward(x, gamma, beta, rm.copy(), rv.copy())
    out_t, _ = bn.batchnorm2d_forward(xt, gamma, beta, rm.copy(), rv.copy())
    np.testing.assert_array_equal(out, out_t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments(backend):
    bn = get_backend(backend)
    x, gamma, beta, rm, rv = make_inputs((2, 3, 4, 4), np.float64, seed=15)
    fwd = bn.batchnorm2d_forward

    for momentum in (-0.1, 1.5, True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="momentum"):
            fwd(x, gamma, beta, rm, rv, momentum=momentum)
    for eps in (0.0, -1e-5, True, None, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            fwd(x, gamma, beta, rm, rv, eps=eps)

    with pytest.raises(ValueError, match="gamma"):
        fwd(x, np.ones(4), beta, rm, rv)
    with pytest.raises(ValueError, match="beta"):
        fwd(x, gamma, np.ones((3, 1)), rm, rv)
    with pytest.raises(ValueError, match="running_mean"):
        fwd(x, gamma, beta, np.zeros(2), rv)
    with pytest.raises(ValueError, match="x must be 4-D"):
        fwd(x[0], gamma, beta, rm, rv)
    with pytest.raises(ValueError, match="empty"):
        fwd(x[:0], gamma, beta, rm, rv)
    with pytest.raises(TypeError, match="running_var"):
        fwd(x, gamma, beta, rm, rv.astype(np.float32))
    with pytest.raises(TypeError, match="gamma"):
        fwd(x, gamma.astype(np.float32), beta, rm, rv)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        fwd(x.astype(np.int64), gamma, beta, rm, rv)
    with pytest.raises(TypeError, match="running_mean"):
        fwd(x, gamma, beta, list(rm), rv)
    read_only = rv.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="running_var"):
        fwd(x, gamma, beta, rm, read_only)
    with pytest.raises(ValueError, match="running_mean"):
        fwd(x, gamma, beta, np.zeros(6)[::2], rv)
    # A rejected call must not have touched the running statistics.
    rm0, rv0 = rm.copy(), rv.copy()
    with pytest.raises(ValueError):
        fwd(x, gamma, beta, rm, rv, momentum=2.0)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)

    out, cache = fwd(x, gamma, beta, rm, rv)
    with pytest.raises(ValueError, match="dout"):
        bn.batchnorm2d_backward(np.ones((2, 3, 4, 5)), cache)
    with pytest.raises(ValueError, match="dout"):
        bn.batchnorm2d_backward(np.ones((2, 3, 4)), cache)
    with pytest.raises(TypeError, match="dout"):
        bn.batchnorm2d_backward(np.ones(out.shape, dtype=np.float32), cache)
    with pytest.raises(ValueError, match="cache"):
        bn.batchnorm2d_backward(out, (x, gamma))


def test_bad_threads():
    bn = get_backend("cython")
    x, gamma, beta, rm, rv = make_inputs((2, 3, 4, 4), np.float64, seed=16)
    for threads in (0, -1, "two", 1.5):
        with pytest.raises((ValueError, TypeError), match="threads"):
            bn.batchnorm2d_forward(x, gamma, beta, rm, rv, threads=threads)
    out, cache = bn.batchnorm2d_forward(x, gamma, beta, rm, rv)
    with pytest.raises(ValueError, match="threads"):
        bn.batchnorm2d_backward(out, cache, threads=0)
