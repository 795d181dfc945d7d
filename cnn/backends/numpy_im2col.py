"""The ``python`` backend: vectorised NumPy (im2col/col2im for convolution)."""
from cnn.reference.conv import conv2d_forward, conv2d_backward
from cnn.reference.pool import (maxpool2d_forward, maxpool2d_backward,
                                avgpool2d_forward, avgpool2d_backward)
from cnn.reference.relu import relu_forward, relu_backward
from cnn.reference.dense import dense_forward, dense_backward
from cnn.reference.softmax import softmax_cross_entropy
from cnn.reference.batchnorm import batchnorm2d_forward, batchnorm2d_backward
from cnn.reference.conv_relu_pool import (conv2d_relu_maxpool2d_forward,
                                          conv2d_relu_maxpool2d_backward)
