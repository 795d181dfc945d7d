"""Named architectures and a short spec language for custom stacks.

``build_architecture(spec, num_classes, input_shape)`` takes a name (``lenet5``,
``convnet``, ``convnet_bn``, ``convnet_deep``; ``convnet_cifar`` for 32x32 RGB), a
path to a JSON file holding a list of layer configs (``[{"type": "Conv2D",
"filters": 32, "kernel": 3, "pad": 1}, ...]``),
or a spec string of dash-separated tokens:

    conv32k3p1     Conv2D, 32 filters, 3x3 kernel, pad 1 (s2 = stride 2)
    maxpool2       MaxPool2D 2x2 (maxpool3s2: 3x3 with stride 2); avgpool2 likewise
    gap            GlobalAvgPool2D (also globalavgpool): (C, H, W) -> (C,), the mean
                   of each channel, so a Dense after it fits any input size
    relu, flatten, bn (BatchNorm2D), dropout0.5
    dense128       Dense with 128 units

e.g. ``conv32k3p1-relu-maxpool2-flatten-dense10``. The last Dense must have one
unit per class. A string that is neither a name nor a readable spec is refused
with the list of names, and the closest name when it looks like a misspelling
(``convent``: did you mean convnet?).
"""
import difflib
import json
import os
import re

from cnn.layers import (
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
    layer_from_config,
)
from cnn.model import Sequential


def lenet5(num_classes=10):
    return [Conv2D(6, 5, pad=2), ReLU(), MaxPool2D(2),
            Conv2D(16, 5), ReLU(), MaxPool2D(2), Flatten(),
            Dense(120), ReLU(), Dense(84), ReLU(), Dense(num_classes, init="glorot")]


def convnet(num_classes=10):
    return [Conv2D(32, 3, pad=1), ReLU(), MaxPool2D(2),
            Conv2D(64, 3, pad=1), ReLU(), MaxPool2D(2), Flatten(),
            Dense(128), ReLU(), Dense(num_classes, init="glorot")]


def convnet_bn(num_classes=10):
    return [Conv2D(32, 3, pad=1), BatchNorm2D(), ReLU(), MaxPool2D(2),
            Conv2D(64, 3, pad=1), BatchNorm2D(), ReLU(), MaxPool2D(2), Flatten(),
            Dense(128), ReLU(), Dropout(0.3), Dense(num_classes, init="glorot")]


def convnet_deep(num_classes=10):
    """Two 3x3 convolutions per stage (VGG style) with batch norm: about 3.5x the
    work of convnet, for the higher-accuracy recipe."""
    def stage(filters):
        return [Conv2D(filters, 3, pad=1), BatchNorm2D(), ReLU(),
                Conv2D(filters, 3, pad=1), BatchNorm2D(), ReLU(), MaxPool2D(2)]
    return stage(32) + stage(64) + [Flatten(), Dense(256), ReLU(), Dropout(0.5),
                                    Dense(num_classes, init="glorot")]


def convnet_cifar(num_classes=10):
    """For 32x32 RGB (CIFAR-class) images, built for any input size: a one-conv
    stem, then two VGG stages of two 3x3 convolutions, all with batch norm, the
    size halved after each (32-64-128 channels), then GlobalAvgPool2D and Dense.
    No Flatten, so the Dense sees 128 features whatever the image size. The stem
    has one conv because a second one at full resolution costs a third more time
    per epoch (280k parameters; ~380 training images/s on 2 cores)."""
    def conv(filters):
        return [Conv2D(filters, 3, pad=1), BatchNorm2D(), ReLU()]
    return (conv(32) + [MaxPool2D(2)]
            + conv(64) + conv(64) + [MaxPool2D(2)]
            + conv(128) + conv(128) + [MaxPool2D(2)]
            + [GlobalAvgPool2D(), Dense(num_classes, init="glorot")])


ARCHITECTURES = {"lenet5": lenet5, "convnet": convnet, "convnet_bn": convnet_bn,
                 "convnet_deep": convnet_deep, "convnet_cifar": convnet_cifar}

_TOKENS = [
    (re.compile(r"conv(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?"),
     lambda m: Conv2D(int(m[1]), int(m[2]), int(m[3] or 1), int(m[4] or 0))),
    (re.compile(r"maxpool(\d+)(?:s(\d+))?"),
     lambda m: MaxPool2D(int(m[1]), int(m[2]) if m[2] else None)),
    (re.compile(r"avgpool(\d+)(?:s(\d+))?"),
     lambda m: AvgPool2D(int(m[1]), int(m[2]) if m[2] else None)),
    (re.compile(r"gap|globalavgpool"), lambda m: GlobalAvgPool2D()),
    (re.compile(r"relu"), lambda m: ReLU()),
    (re.compile(r"flatten"), lambda m: Flatten()),
    (re.compile(r"bn"), lambda m: BatchNorm2D()),
    (re.compile(r"dropout(0?\.\d+|0)"), lambda m: Dropout(float(m[1]))),
    (re.compile(r"dense(\d+)"), lambda m: Dense(int(m[1]))),
]


def parse_spec(spec):
    """Layers from a dash-separated spec string (see the module docstring)."""
    layers = []
    for token in spec.strip().lower().split("-"):
        for pattern, make in _TOKENS:
            match = pattern.fullmatch(token)
            if match:
                try:
                    layers.append(make(match))
                except (TypeError, ValueError) as exc:   # e.g. conv0k3, maxpool0
                    raise ValueError(f"architecture spec {spec!r}: bad token {token!r}: "
                                     f"{exc}") from None
                break
        else:
            raise ValueError(f"architecture spec {spec!r}: cannot read {token!r} (expected "
                             f"e.g. conv32k3p1, maxpool2, avgpool2, gap, relu, flatten, "
                             f"bn, dropout0.5, dense10)")
    if layers and isinstance(layers[-1], Dense) and layers[-1].init == "he":
        layers[-1].init = "glorot"   # the classifier has no relu after it
    return layers


def build_architecture(spec, num_classes=10, input_shape=(1, 28, 28), class_names=None):
    """An unbuilt Sequential model from a name, a JSON file path or a spec string."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise TypeError(f"architecture must be a name, a JSON file path or a spec string, "
                        f"got {type(spec).__name__}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if spec in ARCHITECTURES:
        layers, name = ARCHITECTURES[spec](num_classes), spec
    elif spec.endswith(".json") or os.path.isfile(spec):
        try:
            with open(spec) as f:
                configs = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"architecture file {spec!r}: {exc}") from None
        if isinstance(configs, dict):
            configs = configs.get("layers")
        if not isinstance(configs, list) or not configs:
            raise ValueError(f"architecture file {spec!r} must hold a list of layer configs")
        layers, name = [layer_from_config(c) for c in configs], os.path.basename(spec)
    else:
        try:
            layers = parse_spec(spec)
        except ValueError as exc:
            raise ValueError(_unreadable_spec_message(spec, exc)) from None
        name = spec
    _check_num_classes(spec, layers, num_classes, input_shape)
    return Sequential(layers, input_shape=input_shape, class_names=class_names, name=name)


def _unreadable_spec_message(spec, exc):
    """The spec parser's message, led by the closest name when ``spec`` looks like a
    misspelled one (``convent``, ``lenet``, ``convnet-bn``), and the list of names
    when it is a single word. The cutoff is above difflib's 0.6 so that ``resnet50``
    (0.71 to lenet5) gets the list rather than a wrong guess."""
    names = ", ".join(ARCHITECTURES)
    word = spec.strip().lower()
    guess = difflib.get_close_matches(word, ARCHITECTURES, n=1, cutoff=0.75)
    if guess:
        return (f"unknown architecture {spec!r}: did you mean {guess[0]}? (named "
                f"architectures: {names}; or a JSON file, or a spec such as "
                f"conv32k3p1-relu-maxpool2-flatten-dense10)")
    if "-" not in word:       # one word: more likely a name than a one-layer stack
        return f"{exc}; the named architectures are {names}"
    return str(exc)


def _check_num_classes(spec, layers, num_classes, input_shape):
    """The stack must end in one score per class (checked here even without class
    names; shape errors inside the stack are left to ``Sequential.build``)."""
    shape = tuple(input_shape)
    try:
        for layer in layers:
            shape = tuple(layer.compute_output_shape(shape))
    except (TypeError, ValueError):
        return
    if shape != (num_classes,):
        raise ValueError(f"architecture {spec!r} outputs shape {shape}, but there are "
                         f"{num_classes} classes: its last layer must be Dense({num_classes})")
