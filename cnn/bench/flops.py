"""FLOPs per image of a model, counted from its layers' shapes, to turn the
table's images/s and epoch times into GFLOP/s (and "% of peak").

Convention (as in the papers and ONNX Runtime's profiles): a multiply-add is
2 FLOPs, and only the convolutions and dense layers count; activations,
pooling, batch norm and biases are memory traffic, not arithmetic worth
counting. The count is the direct algorithm's: a Winograd convolution does
fewer multiplies for the same result, so its GFLOP/s are "effective" ones.
"""
from cnn.layers import Conv2D, Dense


def layer_flops(model):
    """[(layer, forward FLOPs per image)] for every Conv2D and Dense layer of
    ``model`` (a Sequential, built or not), shapes chained from its input."""
    counted = []
    shape = tuple(model.input_shape)
    for layer in model.layers:
        out = tuple(layer.compute_output_shape(shape))
        if isinstance(layer, Conv2D):
            kh, kw = layer.kernel
            multiply_adds = shape[0] * kh * kw * out[0] * out[1] * out[2]
            counted.append((layer, 2 * multiply_adds))
        elif isinstance(layer, Dense):
            counted.append((layer, 2 * shape[-1] * layer.units))
        shape = out
    return counted


def forward_flops(model):
    """FLOPs of one image's forward pass."""
    return sum(flops for _, flops in layer_flops(model))


def train_flops(model, input_grad=False):
    """FLOPs of one image's training step: the forward pass, the weight
    gradients (as many again) and the input gradients (as many again), except
    the first layer's input gradient when ``input_grad`` is False, as in the
    benchmark's steps (``model.backward(..., input_grad=False)``): about 3x
    the forward pass."""
    counted = layer_flops(model)
    total = 3 * sum(flops for _, flops in counted)
    if counted and not input_grad and counted[0][0] is model.layers[0]:
        total -= counted[0][1]
    return total


def arch_flops(arch):
    """(forward, training step) FLOPs per image of a named architecture."""
    from cnn.architectures import build_architecture
    model = build_architecture(arch)
    return forward_flops(model), train_flops(model)
