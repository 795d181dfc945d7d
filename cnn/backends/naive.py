"""The ``naive`` backend: direct loop formulas in NumPy, for small shapes and checks."""
from cnn.reference.batchnorm import (
    batchnorm2d_backward_naive as batchnorm2d_backward,
    batchnorm2d_forward_naive as batchnorm2d_forward,
)
from cnn.reference.conv import (
    conv2d_backward_naive as conv2d_backward,
    conv2d_forward_naive as conv2d_forward,
)
from cnn.reference.conv_relu_pool import (
    conv2d_relu_maxpool2d_backward_naive as conv2d_relu_maxpool2d_backward,
    conv2d_relu_maxpool2d_forward_naive as conv2d_relu_maxpool2d_forward,
)
from cnn.reference.dense import (
    dense_backward_naive as dense_backward,
    dense_forward_naive as dense_forward,
)
from cnn.reference.pool import (
    avgpool2d_backward_naive as avgpool2d_backward,
    avgpool2d_forward_naive as avgpool2d_forward,
    maxpool2d_backward_naive as maxpool2d_backward,
    maxpool2d_forward_naive as maxpool2d_forward,
)
from cnn.reference.relu import (
    relu_backward_naive as relu_backward,
    relu_forward_naive as relu_forward,
)
from cnn.reference.softmax import softmax_cross_entropy_naive as softmax_cross_entropy
