"""Named architectures, the spec language and JSON architecture files."""
import json

import numpy as np
import pytest

from cnn.architectures import ARCHITECTURES, build_architecture, parse_spec
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
)

CLASSES = [f"class{i}" for i in range(10)]


@pytest.mark.parametrize("name, params, shapes", [
    ("lenet5", 61_706,
     [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 10, 10), (16, 5, 5), (400,),
      (120,), (120,), (84,), (84,), (10,)]),
    ("convnet", 421_642,
     [(32, 28, 28), (32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 14, 14), (64, 7, 7),
      (3136,), (128,), (128,), (10,)]),
    ("convnet_bn", 421_642 + 2 * 32 + 2 * 64,
     [(32, 28, 28)] * 3 + [(32, 14, 14)] + [(64, 14, 14)] * 3 + [(64, 7, 7), (3136,),
                                                                  (128,), (128,), (128,),
                                                                  (10,)]),
    ("convnet_deep", 871_018,
     [(32, 28, 28)] * 6 + [(32, 14, 14)] + [(64, 14, 14)] * 6 + [(64, 7, 7), (3136,),
                                                                 (256,), (256,), (256,),
                                                                 (10,)]),
])
def test_named_architectures(name, params, shapes):
    model = build_architecture(name, 10, class_names=CLASSES).build(seed=0)
    assert model.name == name
    assert [layer.output_shape for layer in model.layers] == shapes
    assert model.num_params() == params
    assert model.output_shape == (10,) and model.num_classes == 10
    last = model.layers[-1]
    assert isinstance(last, Dense) and last.init == "glorot"
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert model.forward(x).shape == (2, 10)


def test_named_architectures_follow_num_classes():
    assert set(ARCHITECTURES) == {"lenet5", "convnet", "convnet_bn", "convnet_deep",
                                  "convnet_cifar"}
    for name in ARCHITECTURES:
        model = build_architecture(name, 3).build(seed=0)
        assert model.output_shape == (3,), name
    bn = build_architecture("convnet_bn")
    assert sum(isinstance(layer, BatchNorm2D) for layer in bn.layers) == 2
    assert [layer.rate for layer in bn.layers if isinstance(layer, Dropout)] == [0.3]


def test_spec_string():
    model = build_architecture("conv8k3p1-relu-maxpool2-flatten-dense10").build(seed=0)
    assert [type(layer) for layer in model.layers] == [Conv2D, ReLU, MaxPool2D, Flatten,
                                                        Dense]
    conv, _, pool, _, dense = model.layers
    assert (conv.filters, conv.kernel, conv.stride, conv.pad) == (8, (3, 3), (1, 1), (1, 1))
    assert pool.kernel == pool.stride == (2, 2)
    assert dense.units == 10 and dense.init == "glorot"     # the classifier: no relu after
    assert conv.init == "he"
    assert [layer.output_shape for layer in model.layers] == [
        (8, 28, 28), (8, 28, 28), (8, 14, 14), (8 * 14 * 14,), (10,)]
    assert model.name == "conv8k3p1-relu-maxpool2-flatten-dense10"


def test_spec_strides_bn_dropout_avgpool():
    spec = "conv16k5s2p2-bn-relu-conv8k3-relu-avgpool2-maxpool3s2-flatten-dropout0.5-" \
           "dense32-relu-dropout0-dense10"
    model = build_architecture(spec).build(seed=0)
    kinds = [type(layer) for layer in model.layers]
    assert kinds == [Conv2D, BatchNorm2D, ReLU, Conv2D, ReLU, AvgPool2D, MaxPool2D, Flatten,
                     Dropout, Dense, ReLU, Dropout, Dense]
    layers = model.layers
    assert layers[0].stride == (2, 2) and layers[0].pad == (2, 2) and layers[0].kernel == (5, 5)
    assert layers[3].stride == (1, 1) and layers[3].pad == (0, 0)
    assert layers[5].kernel == layers[5].stride == (2, 2)
    assert layers[6].kernel == (3, 3) and layers[6].stride == (2, 2)
    assert layers[8].rate == 0.5 and layers[11].rate == 0.0
    assert layers[9].init == "he" and layers[12].init == "glorot"
    assert [layer.output_shape for layer in layers[:8]] == [
        (16, 14, 14), (16, 14, 14), (16, 14, 14), (8, 12, 12), (8, 12, 12), (8, 6, 6),
        (8, 2, 2), (32,)]
    assert model.output_shape == (10,)


def test_spec_is_case_and_space_tolerant():
    layers = parse_spec("  Conv4K3-ReLU-Flatten-Dense10 ")
    assert [type(layer) for layer in layers] == [Conv2D, ReLU, Flatten, Dense]
    assert [type(layer) for layer in parse_spec("avgpool2s1-bn")] == [AvgPool2D, BatchNorm2D]
    assert parse_spec("avgpool2s1")[0].stride == (1, 1)
    assert parse_spec("dropout.25")[0].rate == 0.25


@pytest.mark.parametrize("spec, token", [
    ("conv8-relu-flatten-dense10", "conv8"),
    ("conv8k3-relu-pool2-flatten-dense10", "pool2"),
    ("conv8k3p1-relu-maxpool-flatten-dense10", "maxpool"),
    ("conv8k3-relu-flatten-dense", "dense"),
    ("conv8k3-relu-flatten-dropout1.5-dense10", "dropout1.5"),
    ("conv8k3-relu-flatten-dropout1-dense10", "dropout1"),
    ("conv8k3-relu6-flatten-dense10", "relu6"),
    ("conv8k3-relu--flatten-dense10", ""),
    ("conv8k3 relu flatten dense10", "conv8k3 relu flatten dense10"),
    ("", ""),
    ("conv0k3-flatten-dense10", "conv0k3"),
    ("conv8k0-flatten-dense10", "conv8k0"),
    ("conv8k3s0-flatten-dense10", "conv8k3s0"),
    ("maxpool0-flatten-dense10", "maxpool0"),
    ("flatten-dense0", "dense0"),
])
def test_bad_spec_tokens_are_named(spec, token):
    with pytest.raises(ValueError) as info:
        build_architecture(spec)
    assert repr(token) in str(info.value), str(info.value)


def test_spec_must_be_a_string():
    with pytest.raises(TypeError, match="architecture"):
        build_architecture(None)


LAYER_CONFIGS = [
    {"type": "Conv2D", "filters": 4, "kernel": 3, "pad": 1},
    {"type": "BatchNorm2D"},
    {"type": "ReLU"},
    {"type": "AvgPool2D", "kernel": 2},
    {"type": "Flatten"},
    {"type": "Dropout", "rate": 0.2},
    {"type": "Dense", "units": 10, "init": "glorot"},
]


@pytest.mark.parametrize("wrap", [False, True], ids=["list", "dict"])
def test_json_file_of_layer_configs(tmp_path, wrap):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"layers": LAYER_CONFIGS} if wrap else LAYER_CONFIGS))
    model = build_architecture(str(path), 10, class_names=CLASSES).build(seed=0)
    assert model.name == "mine.json"
    assert [layer.config()["type"] for layer in model.layers] == \
        [c["type"] for c in LAYER_CONFIGS]
    assert model.layers[0].pad == (1, 1) and model.layers[5].rate == 0.2
    assert model.output_shape == (10,)
    assert model.num_params() == 4 * 9 + 4 + 2 * 4 + (4 * 14 * 14) * 10 + 10
    # the same from a pathlib.Path
    assert build_architecture(path).config()["layers"] == model.config()["layers"]


def test_json_file_round_trips_a_model_config(tmp_path):
    model = build_architecture("convnet_bn")
    path = tmp_path / "convnet_bn.json"
    path.write_text(json.dumps(model.config()["layers"]))
    again = build_architecture(str(path)).build(seed=0)
    assert again.config()["layers"] == model.config()["layers"]
    assert again.num_params() == model.build(seed=0).num_params()


@pytest.mark.parametrize("content, words", [
    ("[", ["bad.json"]),
    ("[]", ["bad.json", "list of layer configs"]),
    ('{"layer": []}', ["list of layer configs"]),
    ('"conv8k3"', ["list of layer configs"]),
    ('[{"type": "Conv2D", "filters": 4}]', ["Conv2D", "kernel"]),
    ('[{"type": "Pool"}]', ["unknown layer type 'Pool'"]),
])
def test_bad_json_files(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        build_architecture(str(path))
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_missing_json_file():
    with pytest.raises(ValueError, match="nowhere.json"):
        build_architecture("/nonexistent/nowhere.json")


@pytest.mark.parametrize("spec", ["conv4k3-relu-flatten-dense5", "flatten-dense12",
                                  "conv10k28", "conv10k28-flatten-dense10-dense7"])
def test_last_layer_must_output_num_classes(spec):
    with pytest.raises(ValueError) as info:
        build_architecture(spec, 10)
    assert "10 classes" in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="10 classes"):
        build_architecture(spec, 10, class_names=CLASSES).build()


def test_last_layer_check_for_json_and_flatten_outputs(tmp_path):
    path = tmp_path / "four.json"
    path.write_text(json.dumps([{"type": "Flatten"}, {"type": "Dense", "units": 4}]))
    with pytest.raises(ValueError, match="10 classes"):
        build_architecture(str(path), 10)
    assert build_architecture(str(path), 4).build().output_shape == (4,)
    # conv to 10 feature maps of 1x1, then flatten: 10 scores without a Dense
    model = build_architecture("conv10k28-flatten", 10).build()
    assert model.output_shape == (10,)


def test_shape_errors_inside_the_stack_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 0 \(Dense.*Flatten"):
        build_architecture("dense10").build()
    with pytest.raises(ValueError, match=r"layer 2 \(Conv2D"):
        build_architecture("conv4k3-maxpool2-conv4k20-flatten-dense10").build()


def test_class_names_must_match_num_classes():
    with pytest.raises(ValueError, match="3 class names for 10 classes"):
        build_architecture("lenet5", 10, class_names=["a", "b", "c"])


@pytest.mark.parametrize("input_shape", [(3, 32, 32), (1, 28, 28), (3, 64, 48), (3, 8, 9)])
@pytest.mark.parametrize("num_classes", [10, 3])
def test_convnet_cifar_builds_for_any_input_shape(input_shape, num_classes):
    model = build_architecture("convnet_cifar", num_classes, input_shape=input_shape)
    model.build(seed=0)
    assert model.output_shape == (num_classes,)
    C, H, W = input_shape
    kinds = [type(layer) for layer in model.layers]
    assert kinds[-2:] == [GlobalAvgPool2D, Dense] and Flatten not in kinds
    assert kinds.count(Conv2D) == kinds.count(BatchNorm2D) == 5 and kinds.count(MaxPool2D) == 3
    assert model.layers[-2].input_shape == (128, H // 8, W // 8)
    # only the first conv's weights depend on the input: none on its size
    assert model.num_params() == 279_882 - 3 * 32 * 9 + C * 32 * 9 + 129 * (num_classes - 10)
    x = np.random.default_rng(0).standard_normal((2, C, H, W)).astype(np.float32)
    assert model.forward(x, training=True).shape == (2, num_classes)
    assert model.backward(np.ones((2, num_classes), np.float32)).shape == x.shape


def test_convnet_cifar_needs_eight_pixels():
    with pytest.raises(ValueError, match="MaxPool2D kernel"):
        build_architecture("convnet_cifar", 10, input_shape=(3, 7, 32)).build(seed=0)


@pytest.mark.parametrize("spec, guess", [
    ("convent", "convnet"), ("lenet", "lenet5"), ("ConvNet", "convnet"),
    ("convnet-bn", "convnet_bn"), ("convnet_cifr", "convnet_cifar"),
    (" convnet_dep ", "convnet_deep"),
])
def test_misspelled_name_suggests_the_closest_and_lists_them_all(spec, guess):
    with pytest.raises(ValueError) as info:
        build_architecture(spec)
    message = str(info.value)
    assert f"did you mean {guess}?" in message, message
    for name in ARCHITECTURES:
        assert name in message, (name, message)


@pytest.mark.parametrize("spec", ["resnet50", "vgg", "conv"])
def test_unknown_single_word_lists_the_names_without_a_wrong_guess(spec):
    with pytest.raises(ValueError) as info:
        build_architecture(spec)
    message = str(info.value)
    assert "did you mean" not in message, message
    assert repr(spec) in message and all(name in message for name in ARCHITECTURES), message


def test_misspelled_spec_token_keeps_the_token_message():
    with pytest.raises(ValueError) as info:
        build_architecture("conv8k3-relu-flaten-dense10")
    assert "'flaten'" in str(info.value) and "did you mean" not in str(info.value)
