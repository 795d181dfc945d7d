"""cnn: convolutional networks on the CPU with Cython kernels.

``cnn.load_model(path)`` loads a weights file written by ``python -m cnn.train``;
``cnn.backends.get_backend()`` gives the kernels; ``set_num_threads`` sets how
many threads they use by default.
"""
from cnn._threads import get_num_threads, set_num_threads
from cnn.backends import get_backend
from cnn.io import load_model

__version__ = "0.1.0"
__all__ = ["get_backend", "get_num_threads", "load_model", "set_num_threads", "__version__"]
