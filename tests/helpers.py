"""One helper to check an op: its backends against each other, and its
gradients against central differences."""
import numpy as np

from cnn.backends import get_backend

# float32 kernels sum in a different order than NumPy, so compare relative to
# the scale of the values rather than element by element.
TOLERANCE = {np.dtype(np.float32): dict(rtol=2e-4, atol=2e-4),
             np.dtype(np.float64): dict(rtol=1e-9, atol=1e-9)}


def assert_close(actual, expected, dtype=None, name="value"):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    if dtype is not None:
        assert actual.dtype == np.dtype(dtype), f"{name}: dtype {actual.dtype} != {dtype}"
    tol = TOLERANCE[np.dtype(dtype or actual.dtype)]
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               err_msg=name)


def as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def compare_backends(op, args, kwargs=None, backends=("cython", "python"), seed=0,
                     grad_names=None):
    """Run ``op``'s forward and backward on each backend with the same inputs and
    the same upstream gradient; assert every output and gradient agrees with the
    first backend's. Returns the first backend's (out, grads).

    ``op`` is a family name such as "conv2d" (uses NAME_forward/NAME_backward).
    Inputs are copied for every backend, so ops that update arguments in place
    (batch norm's running statistics) see the same values each time.
    """
    kwargs = kwargs or {}
    rng = np.random.default_rng(seed)
    results = []
    dout = None
    for name in backends:
        backend = get_backend(name)
        call_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        out, cache = getattr(backend, f"{op}_forward")(*call_args, **kwargs)
        if dout is None:
            dout = rng.standard_normal(out.shape).astype(out.dtype)
        grads = as_tuple(getattr(backend, f"{op}_backward")(dout.copy(), cache))
        results.append((name, out, grads, call_args))
    ref_name, ref_out, ref_grads, ref_args = results[0]
    dtype = ref_out.dtype
    for name, out, grads, call_args in results[1:]:
        assert_close(out, ref_out, dtype, f"{op} forward: {name} vs {ref_name}")
        assert len(grads) == len(ref_grads)
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            label = grad_names[i] if grad_names else f"gradient {i}"
            assert_close(g, r, dtype, f"{op} backward {label}: {name} vs {ref_name}")
        for a, r in zip(call_args, ref_args):  # in-place updates agree too
            if isinstance(a, np.ndarray):
                assert_close(a, r, dtype, f"{op} in-place argument: {name} vs {ref_name}")
    return ref_out, ref_grads


def numerical_gradient(f, x, dout, h=1e-6):
    """d sum(f(x) * dout) / dx by central differences; f returns an array."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(f(x) * dout)
        flat[i] = old - h
        minus = np.sum(f(x) * dout)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def check_gradients(forward, backward, args, wrt, seed=0, rtol=1e-5, atol=1e-7):
    """Check backward's gradients against central differences, in float64.

    forward(*args) -> (out, cache); backward(dout, cache) -> the gradients of
    the arguments whose indices are listed in ``wrt``, in that order.
    """
    rng = np.random.default_rng(seed)
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    out, cache = forward(*args)
    dout = rng.standard_normal(out.shape)
    grads = as_tuple(backward(dout.copy(), cache))
    assert len(grads) == len(wrt)
    for index, grad in zip(wrt, grads):
        def f(value, index=index):
            call = list(args)
            call[index] = value
            return forward(*call)[0]
        expected = numerical_gradient(f, args[index].copy(), dout)
        np.testing.assert_allclose(grad, expected, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of argument {index}")


class NaNFilledNumPy:
    """numpy, except that empty() and empty_like() hand out arrays filled with NaN
    (integers: the most negative value). The compiled kernels' wrappers allocate
    their outputs with np.empty; with this in place of their ``np``, an element a
    kernel forgot to write is NaN every time, not only when the allocator happens
    to return dirty memory."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def _poison(a):
        a.fill(np.nan if a.dtype.kind in "fc" else np.iinfo(a.dtype).min)
        return a

    def empty(self, *args, **kwargs):
        return self._poison(np.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(np.empty_like(*args, **kwargs))


KERNEL_MODULES = ("cnn._conv", "cnn._conv_relu_pool", "cnn._pool", "cnn._relu", "cnn._dense",
                  "cnn._softmax", "cnn._batchnorm", "cnn._winograd")


def poison_kernel_outputs(monkeypatch):
    """Make every compiled kernel module allocate with NaNFilledNumPy (undone by
    ``monkeypatch`` at the end of the test)."""
    import importlib
    for name in KERNEL_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "np", NaNFilledNumPy())


def repeat_for(seconds, values, at_least=3):
    """Cycle through ``values`` for ``seconds`` (and at least ``at_least`` items): for
    checks of races, which show in most runs but not every one."""
    import itertools
    import time
    end = time.perf_counter() + seconds
    for i, value in enumerate(itertools.cycle(values)):
        if i >= at_least and time.perf_counter() > end:
            return
        yield value


def assert_threads_sum_db_exactly(forward, backward):
    """Each thread adds its images' db into its own part. 8000 one-pixel images,
    1024 filters, integer-valued dout: the sums are exact, and threads sharing one
    accumulator (a race) lose additions in most runs; repeated for 0.3 s to catch
    it on a busy machine too. ``forward(x, w, b)`` / ``backward(dout, cache)``
    are a conv op's pair with the call's options bound."""
    N, F = 8000, 1024
    x, w = np.ones((N, 1, 1, 1), np.float32), np.ones((F, 1, 1, 1), np.float32)
    b = np.zeros(F, np.float32)
    out, cache = forward(x, w, b)
    dout = np.ones_like(out)
    for run in repeat_for(0.3, range(100), at_least=3):
        _, dw, db = backward(dout, cache)
        np.testing.assert_array_equal(db, np.full(F, N, np.float32), err_msg=f"run {run}")
        np.testing.assert_array_equal(dw.reshape(F), np.full(F, N, np.float32))
