"""The compiled backend: re-exports the kernels built from pyx/ (see setup.py).

Each compiled ``def`` validates its arguments (cnn._checks) before any nogil
code runs, so these functions are safe to call with any input. The prepared
steps of an inference plan (``ConvReLUPoolPlan``, ``DensePlan``; cnn.plan)
validate their weights and geometry once when made, and each call's input.
"""
from cnn.backends import BackendUnavailable

try:
    from cnn._batchnorm import batchnorm2d_backward, batchnorm2d_forward
    from cnn._conv import conv2d_backward, conv2d_forward
    from cnn._conv_relu_pool import (
        ConvReLUPoolPlan,
        conv2d_relu_maxpool2d_backward,
        conv2d_relu_maxpool2d_forward,
    )
    from cnn._dense import DensePlan, dense_backward, dense_forward
    from cnn._pool import (
        avgpool2d_backward,
        avgpool2d_forward,
        maxpool2d_backward,
        maxpool2d_forward,
    )
    from cnn._relu import relu_backward, relu_forward
    from cnn._softmax import softmax_cross_entropy
    from cnn._winograd import winograd_conv2d_forward, winograd_filters
except ImportError as exc:  # not built, or built for another Python
    raise BackendUnavailable(
        "the cython backend is not built: run `pip install -e .` in the project "
        f"folder to compile the kernels ({exc})") from exc
