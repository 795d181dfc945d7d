"""ONNX export (cnn.export): ONNX Runtime's answers equal the model's, for every
named architecture and every layer type; batch axis, metadata, errors, the CLI.

Weights, biases and batch-norm statistics are all random (a fresh model's
zero biases and unit variances would hide a mis-wired bias or eps), and every
model has an input normalisation, so a graph that skipped or misapplied any of
them fails.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import cnn  # noqa: E402
from cnn import export  # noqa: E402
from cnn.architectures import ARCHITECTURES, build_architecture  # noqa: E402
from cnn.io import save_model  # noqa: E402
from cnn.layers import (  # noqa: E402
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    ReLU,
)
from cnn.model import Sequential  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GRAY_NORM = {"mean": 0.2860, "std": 0.3530}
RGB_NORM = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
TOLERANCE = 1e-5


def randomize(model, seed=1):
    """Random values in every parameter and buffer (variances positive, some
    small enough that the batch-norm eps matters), then the classifier scaled
    so that the logits spread by about 3: probabilities neither uniform nor
    one-hot, where a wrong graph shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for name, value in list(layer.params.items()) + list(layer.buffers.items()):
            if name == "running_var":
                value[...] = rng.uniform(0.01, 2.0, value.shape)
            elif name == "gamma":
                value[...] = rng.uniform(0.5, 1.5, value.shape)
            elif name != "w":
                value[...] = rng.normal(0, 0.2, value.shape)
    classifier = model.layers[-1].params
    scale = 3 / model.logits(model.prepare(pixels(model, 16, seed=seed))).std()
    classifier["w"] *= scale
    classifier["b"] *= scale
    return model


def named(arch):
    shape = (3, 32, 32) if arch == "convnet_cifar" else (1, 28, 28)
    model = build_architecture(arch, input_shape=shape).build(seed=0)
    model.normalization = RGB_NORM if shape[0] == 3 else GRAY_NORM
    return randomize(model)


def session(model):
    return ort.InferenceSession(export.to_onnx(model).SerializeToString(),
                                providers=["CPUExecutionProvider"])


def pixels(model, n, seed=2):
    return np.random.default_rng(seed).random((n,) + model.input_shape, dtype=np.float32)


def check_against_model(model, batches=(7,)):
    """Run the exported graph; assert it equals the model; return max |dp|."""
    sess = session(model)
    worst = 0.0
    for n in batches:
        x = pixels(model, n)
        proba, labels, logits = sess.run(["probabilities", "labels", "logits"],
                                         {"input": x})
        expected = model.predict_proba(x)
        assert proba.shape == (n, model.num_classes) and labels.shape == (n,)
        np.testing.assert_allclose(proba, expected, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(logits, model.logits(model.prepare(x)), rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_array_equal(labels, proba.argmax(axis=1))
        worst = max(worst, float(np.abs(proba - expected).max()))
    # neither uniform nor one-hot, so a wrong graph could not pass by luck
    assert 0.3 < expected.max(axis=1).mean() < 0.99
    return worst


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_named_architecture_matches_predict_proba(arch):
    worst = check_against_model(named(arch))
    print(f"{arch}: max |onnxruntime - predict_proba| = {worst:.2e}")


# Every layer type, strided, padded, asymmetric, pooled both ways, in both
# spec-string and layer-object form.
SPECS = [
    "conv8k5s2p2-bn-relu-avgpool3s2-conv16k3p1-relu-maxpool2-flatten-dropout0.5-dense32-relu"
    "-dense10",
    "conv8k3p1-relu-avgpool2-bn-conv8k3s2-relu-maxpool3s2-dropout0.2-gap-dense10",
]


@pytest.mark.parametrize("spec", SPECS)
def test_spec_models_with_every_layer_type_match(spec):
    model = build_architecture(spec).build(seed=0)
    model.normalization = GRAY_NORM
    print(f"{spec}: {check_against_model(randomize(model)):.2e}")


def test_colour_model_with_asymmetric_layers_and_per_channel_normalization():
    layers = [Conv2D(6, (3, 5), stride=(2, 1), pad=(0, 2)), BatchNorm2D(eps=1e-3), ReLU(),
              AvgPool2D((2, 3), stride=(1, 2)), Conv2D(8, 3, pad=1), ReLU(),
              MaxPool2D(2), Flatten(), Dropout(0.5), Dense(5)]
    model = Sequential(layers, input_shape=(3, 20, 24), name="odd").build(seed=0)
    model.normalization = RGB_NORM
    check_against_model(randomize(model))


def test_float64_model_and_no_normalization():
    model = build_architecture("conv4k3-relu-gap-dense3", num_classes=3).build(
        seed=0, dtype=np.float64)
    assert model.normalization is None
    check_against_model(randomize(model))


def test_dynamic_batch_axis():
    model = named("lenet5")
    check_against_model(model, batches=(1, 7))
    graph = export.to_onnx(model).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]


def test_metadata_and_standard_header(tmp_path):
    model = named("convnet_cifar")
    model.class_names = tuple(f"class {k}" for k in range(10))
    path = tmp_path / "m.onnx"
    assert cnn.export_onnx(model, path) == str(path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == export.IR_VERSION
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) \
        .get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == list(model.class_names)
    assert meta["model_name"] == "convnet_cifar"
    assert "[N, 3, 32, 32]" in meta["input"] and "[0, 1]" in meta["input"]
    assert json.loads(meta["normalization"]) == RGB_NORM
    assert json.loads(meta["upload"])["color"] == "RGB"


def test_unknown_layer_is_named():
    class Swish(Layer):
        pass
    model = Sequential([Conv2D(2, 3), Swish(), Flatten(), Dense(3)], input_shape=(1, 6, 6))
    model.build(seed=0, backend="python")
    with pytest.raises(export.ExportError, match=r"layer 1 \(Swish\(\)\) has no ONNX export"):
        export.to_onnx(model)


def test_bad_models_are_refused(tmp_path):
    with pytest.raises(TypeError, match="Sequential"):
        export.to_onnx("convnet")
    with pytest.raises(export.ExportError, match="not built"):
        export.to_onnx(build_architecture("lenet5"))
    model = named("lenet5")
    model.normalization = {"mean": 0.5, "std": 0.0}
    with pytest.raises(export.ExportError, match="positive std"):
        export.to_onnx(model)
    model.normalization = {"mean": [0.5, 0.5], "std": [1, 1]}
    with pytest.raises(export.ExportError, match="per channel"):
        export.to_onnx(model)


def test_a_failed_export_leaves_the_old_file_whole(tmp_path):
    class Swish(Layer):
        pass
    model = Sequential([Swish(), Flatten(), Dense(2)], input_shape=(1, 2, 2)).build(seed=0)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(export.ExportError):
        cnn.export_onnx(model, path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]


# -- the command line


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = named("convnet_bn")
    model.class_names = tuple("abcdefghij")
    path = tmp_path_factory.mktemp("export") / "bn.npz"
    save_model(path, model)
    return path


def test_cli_writes_a_graph_equal_to_the_model(weights, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    out = tmp_path / "sub" / "bn.onnx"
    proc = subprocess.run([sys.executable, "-m", "cnn.export", str(weights), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""    # no runpy warning: cnn does not import cnn.export eagerly
    assert "onnxruntime max |difference|" in proc.stdout
    model = cnn.load_model(weights)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = pixels(model, 3)
    np.testing.assert_allclose(sess.run(["probabilities"], {"input": x})[0],
                               model.predict_proba(x), rtol=0, atol=TOLERANCE)
    assert json.loads(sess.get_modelmeta().custom_metadata_map["class_names"]) == list("abcdefghij")
    assert sorted(os.listdir(out.parent)) == ["bn.onnx"]    # no temporary file left


def run_main(capsys, *args):
    code = export.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_cli_missing_and_corrupt_weights(capsys, tmp_path):
    code, err = run_main(capsys, tmp_path / "missing.npz", tmp_path / "m.onnx")
    assert code == 2 and "MODEL:" in err and "missing.npz" in err and "does not exist" in err
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    code, err = run_main(capsys, corrupt, tmp_path / "m.onnx")
    assert code == 2 and "MODEL:" in err and "corrupt.npz" in err
    assert "Traceback" not in err and not (tmp_path / "m.onnx").exists()


def test_cli_unwritable_output(capsys, weights, tmp_path):
    code, err = run_main(capsys, weights, tmp_path)
    assert code == 2 and "OUTPUT:" in err and "is a folder" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_main(capsys, weights, blocker / "m.onnx")
    assert code == 2 and "OUTPUT:" in err and "is not a folder" in err
    assert os.listdir(tmp_path) == ["file"]


def test_cli_io_error_while_writing(capsys, weights, tmp_path, monkeypatch):
    def full_disk(path, write):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("cnn.io.atomic_write", full_disk)
    code, err = run_main(capsys, weights, tmp_path / "m.onnx")
    assert code == 74 and "OUTPUT:" in err and "No space left on device" in err


def test_cli_refuses_a_graph_that_differs(capsys, weights, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "max_difference", lambda model, data: 0.5)
    code, err = run_main(capsys, weights, tmp_path / "m.onnx")
    assert code == 1 and "differ" in err and not (tmp_path / "m.onnx").exists()
