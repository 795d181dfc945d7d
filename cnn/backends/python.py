"""The ``python`` backend: vectorised NumPy (im2col/col2im for convolution)."""
from cnn.reference.batchnorm import batchnorm2d_backward, batchnorm2d_forward
from cnn.reference.conv import conv2d_backward, conv2d_forward
from cnn.reference.conv_relu_pool import (
    conv2d_relu_maxpool2d_backward,
    conv2d_relu_maxpool2d_forward,
)
from cnn.reference.dense import dense_backward, dense_forward
from cnn.reference.pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)
from cnn.reference.relu import relu_backward, relu_forward
from cnn.reference.softmax import softmax_cross_entropy
