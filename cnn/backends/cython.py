"""The compiled backend: re-exports the kernels built from pyx/ (see setup.py).

Each compiled ``def`` validates its arguments (cnn._checks) before any nogil
code runs, so these functions are safe to call with any input.
"""
from cnn.backends import BackendUnavailable

try:
    from cnn._conv import conv2d_forward, conv2d_backward
    from cnn._conv_relu_pool import (conv2d_relu_maxpool2d_forward,
                                     conv2d_relu_maxpool2d_backward)
    from cnn._pool import (maxpool2d_forward, maxpool2d_backward,
                           avgpool2d_forward, avgpool2d_backward)
    from cnn._relu import relu_forward, relu_backward
    from cnn._dense import dense_forward, dense_backward
    from cnn._softmax import softmax_cross_entropy
    from cnn._batchnorm import batchnorm2d_forward, batchnorm2d_backward
except ImportError as exc:  # not built, or built for another Python
    raise BackendUnavailable(
        "the cython backend is not built: run `pip install -e .` in the project "
        f"folder to compile the kernels ({exc})") from exc
