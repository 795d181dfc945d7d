"""Conv2D -> BatchNorm2D [-> ReLU [-> MaxPool2D]] as one step of a model, with the
batch norm folded into the convolution at inference.

At inference a batch norm is a per-channel affine map with fixed numbers,

    y = gamma * (z - running_mean) / sqrt(running_var + eps) + beta,   z = w * x + b

so with s = gamma / sqrt(running_var + eps) the pair is one convolution:

    w' = w * s (per filter),   b' = (b - running_mean) * s + beta

and the step runs as that convolution, fused with the ReLU and max pooling that
follow (im2col, or Winograd where cnn.winograd says it pays): one pass over the
activations instead of three or four. In training, and whenever a backward
pass may follow (``need_cache``), the step runs its layers one by one, each
keeping its cache, exactly as without the step.

w' and b' are computed once (in float64, rounded once to the model's dtype)
and kept until one of the six arrays they came from changes (cnn.derived), so
weights and statistics changed in place (an optimizer's step, a training
pass's running averages) are seen at the next call.
"""
import numpy as np

from cnn import winograd
from cnn.derived import Derived
from cnn.layers import LayerGroup


class ConvBatchNorm(LayerGroup):
    """The layers (Conv2D, BatchNorm2D[, ReLU[, MaxPool2D]]) as one step."""

    def __init__(self, *layers):
        super().__init__(*layers)
        self._folded = Derived()      # (w', b')
        self._winograd_filters = Derived()

    def folded(self):
        """(w', b'): the convolution with the batch norm folded in."""
        conv, bn = self.layers[:2]
        dtype = conv.params["w"].dtype

        def fold(*sources):
            w, b, gamma, beta, mean, var = (a.astype(np.float64) for a in sources)
            scale = gamma / np.sqrt(var + bn.eps)
            return (np.ascontiguousarray(w * scale[:, None, None, None], dtype=dtype),
                    np.ascontiguousarray((b - mean) * scale + beta, dtype=dtype))

        return self._folded.get(fold, conv.params["w"], conv.params["b"], bn.params["gamma"],
                                bn.params["beta"], bn.buffers["running_mean"],
                                bn.buffers["running_var"])

    def forward(self, x, training=False, need_cache=True):
        if training or need_cache:
            return self.forward_layers(x, training)
        self._caches_valid = False
        conv = self.layers[0]
        ops, threads = conv.ops, conv.threads
        w, b = self.folded()
        if len(self.layers) == 4:
            return winograd.conv_relu_pool_inference(conv, self.layers[3], x, w, b,
                                                     self._winograd_filters)
        out, _ = ops.conv2d_forward(x, w, b, stride=conv.stride, pad=conv.pad, threads=threads)
        if len(self.layers) == 3:
            out, _ = ops.relu_forward(out, threads=threads)
        return out
