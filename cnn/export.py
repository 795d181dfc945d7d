"""Export a model to ONNX: ``python -m cnn.export MODEL.npz MODEL.onnx``.

``export_onnx(model, path)`` (also ``cnn.export_onnx``) writes a standard ONNX
graph (opset 17) that any ONNX runtime executes and that takes the pixels the
service takes:

    input          "input"  float32 [N, C, H, W], pixels in [0, 1] (uint8 / 255),
                   channels-first, RGB order for colour models; N is dynamic
    probabilities  float32 [N, K], softmax of the logits (``model.predict_proba``)
    labels         int64 [N], the most likely class (``model.predict``)
    logits         float32 [N, K], the class scores before softmax

The model's input normalisation (``normalization``, one mean/std or one per
channel, see ``Sequential.prepare``) is the graph's first node, so a caller
never normalises. Layers map one to one onto ONNX operators: Conv2D -> Conv
(strides, pads), MaxPool2D -> MaxPool, AvgPool2D -> AveragePool (our pooling
never pads, so count_include_pad cannot matter; both floor the output size),
GlobalAvgPool2D -> GlobalAveragePool + Flatten, ReLU -> Relu, Flatten ->
Flatten (C, H, W order, as ours), Dense -> Gemm, BatchNorm2D ->
BatchNormalization (running statistics, the layer's eps), Dropout -> nothing
(identity at inference). A layer of any other type is an ExportError naming it.

The metadata (``metadata_props``, ``custom_metadata_map`` in onnxruntime) holds
``model_name``, ``class_names`` (JSON list), ``input`` (the input described in
words), ``normalization`` and ``upload`` (JSON: how image files become those
pixels, as the service's ``/models`` shows it) and ``cnn_version``.

The command loads the weights file, builds the graph, checks it with
``onnx.checker`` and, when onnxruntime is installed, runs it on random pixels
against ``model.predict_proba`` (an export that differs by more than 1e-4 is
not written), then writes it atomically. Exit codes: 0 written, 1 the onnx
package is missing or the graph fails its checks, 2 bad input (a missing or
corrupt weights file, an output that is a folder or cannot be written), 74 an
I/O error while writing.
"""
import argparse
import json
import os
import sys

import numpy as np

from cnn._cli import fail as _fail, unwritable_folder

PROG = "cnn.export"
OPSET = 17
# The IR version of onnx 1.12, the release that introduced opset 17: every
# onnxruntime that runs opset 17 (1.12 and later) reads it, newer IRs not.
IR_VERSION = 8
INPUT_NAME = "input"    # the service's V2 input name
OUTPUTS = ("probabilities", "labels", "logits")
VERIFY_TOLERANCE = 1e-4
VERIFY_IMAGES = 8


class ExportError(ValueError):
    """The model cannot be written as ONNX (a layer with no ONNX form, a bad
    normalisation, an unbuilt model)."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install onnx") from None
    return onnx


def _normalization(model):
    """(mean, std) as float32 arrays shaped for (N, C, H, W), or None."""
    norm = model.normalization
    if norm is None:
        return None
    channels = model.input_shape[0]
    try:
        mean, std = norm["mean"], norm["std"]
        shape = (-1, 1, 1) if isinstance(mean, (list, tuple)) else ()
        mean = np.asarray(mean, np.float32).reshape(shape)
        std = np.asarray(std, np.float32).reshape(shape)
    except (KeyError, TypeError, ValueError):
        raise ExportError(f"model normalization {norm!r} is not {{'mean': ..., 'std': ...}} "
                          f"of numbers or of {channels}-number lists") from None
    if mean.shape != std.shape or mean.ndim and mean.shape[0] != channels \
            or not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ExportError(f"model normalization {norm!r} needs a finite mean and a positive "
                          f"std, one each or one per channel ({channels})")
    return mean, std


def _metadata(model):
    import cnn
    from cnn.images import upload_policy
    C, H, W = model.input_shape
    names = [str(n) for n in model.class_names] if model.class_names else \
        [str(k) for k in range(model.num_classes)]
    colour = "grayscale" if C == 1 else "RGB" if C == 3 else f"{C}-channel"
    return {
        "model_name": str(model.name),
        "class_names": json.dumps(names),
        "input": (f"{INPUT_NAME}: float32 [N, {C}, {H}, {W}] {colour} pixels in [0, 1] "
                  f"(uint8 / 255), channels-first; normalisation is inside the graph"),
        "normalization": json.dumps(model.normalization),
        "upload": json.dumps(upload_policy(model).describe()),
        "cnn_version": cnn.__version__,
    }


def to_onnx(model):
    """The ONNX ``ModelProto`` of a built ``Sequential`` model (see the module
    docstring for its inputs, outputs and metadata); checked by onnx.checker."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    from cnn.model import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a cnn Sequential model, got {type(model).__name__}")
    if model.output_shape is None:
        raise ExportError("model is not built: call model.build() or use cnn.load_model()")

    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    x = INPUT_NAME
    norm = _normalization(model)
    if norm is not None:
        # (x - mean) / std in float32, as Sequential.prepare computes it
        x = node("Sub", [x, const("norm.mean", norm[0])], "norm.centred")
        x = node("Div", [x, const("norm.std", norm[1])], "norm.out")
    for i, layer in enumerate(model.layers):
        kind, p = type(layer).__name__, f"{i}.{type(layer).__name__.lower()}"
        if kind == "Conv2D":
            (ph, pw) = layer.pad
            x = node("Conv", [x, const(f"{i}.w", layer.params["w"]),
                              const(f"{i}.b", layer.params["b"])], p,
                     kernel_shape=list(layer.kernel), strides=list(layer.stride),
                     pads=[ph, pw, ph, pw])
        elif kind == "MaxPool2D":
            x = node("MaxPool", [x], p, kernel_shape=list(layer.kernel),
                     strides=list(layer.stride))
        elif kind == "AvgPool2D":
            x = node("AveragePool", [x], p, kernel_shape=list(layer.kernel),
                     strides=list(layer.stride), count_include_pad=0)
        elif kind == "GlobalAvgPool2D":
            x = node("Flatten", [node("GlobalAveragePool", [x], p)], f"{p}.flat", axis=1)
        elif kind == "ReLU":
            x = node("Relu", [x], p)
        elif kind == "Flatten":
            x = node("Flatten", [x], p, axis=1)
        elif kind == "Dense":
            x = node("Gemm", [x, const(f"{i}.w", layer.params["w"]),
                              const(f"{i}.b", layer.params["b"])], p, transB=1)
        elif kind == "BatchNorm2D":
            x = node("BatchNormalization",
                     [x] + [const(f"{i}.{k}", v) for k, v in (
                         ("gamma", layer.params["gamma"]), ("beta", layer.params["beta"]),
                         ("running_mean", layer.buffers["running_mean"]),
                         ("running_var", layer.buffers["running_var"]))],
                     p, epsilon=layer.eps)
        elif kind == "Dropout":
            continue    # identity at inference
        else:
            raise ExportError(f"layer {i} ({layer!r}) has no ONNX export: cnn.export knows "
                              f"Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, ReLU, "
                              f"Flatten, Dense, BatchNorm2D and Dropout")
    nodes.append(helper.make_node("Identity", [x], ["logits"], name="logits"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1,
                                  name="probabilities"))
    nodes.append(helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0,
                                  name="labels"))

    C, H, W = model.input_shape
    K = model.num_classes
    outputs = {"probabilities": (TensorProto.FLOAT, ["N", K]),
               "labels": (TensorProto.INT64, ["N"]),
               "logits": (TensorProto.FLOAT, ["N", K])}
    graph = helper.make_graph(
        nodes, str(model.name),
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", C, H, W])],
        [helper.make_tensor_value_info(name, *outputs[name]) for name in OUTPUTS], inits)
    metadata = _metadata(model)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cnn", producer_version=metadata["cnn_version"],
                              ir_version=IR_VERSION,
                              doc_string=f"{model.name}: image classifier exported by cnn.export")
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path):
    """Write ``model`` (a built Sequential, e.g. from ``cnn.load_model``) as ONNX
    to ``path``, atomically. Returns the path."""
    from cnn.io import atomic_write
    data = to_onnx(model).SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return os.fspath(path)


def max_difference(model, data, images=VERIFY_IMAGES, seed=0):
    """max |onnxruntime probabilities - model.predict_proba| on ``images`` random
    pixel images (onnxruntime must be installed)."""
    import onnxruntime
    pixels = np.random.default_rng(seed).random((images,) + model.input_shape,
                                                dtype=np.float32)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    ours = session.run(["probabilities"], {INPUT_NAME: pixels})[0]
    return float(np.abs(ours - model.predict_proba(pixels)).max())


# -- command line


def build_parser():
    from cnn import __version__
    p = argparse.ArgumentParser(prog="python -m cnn.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cnn {__version__}")
    p.add_argument("model", metavar="MODEL",
                   help="weights file written by python -m cnn.train (e.g. models/convnet.npz)")
    p.add_argument("output", metavar="OUTPUT", help="the ONNX file to write (e.g. convnet.onnx)")
    return p


def fail(message, code=2):
    return _fail(PROG, message, code)


def _check_output(path):
    """Why OUTPUT cannot be written, or None (found before any work)."""
    if os.path.isdir(path):
        return f"OUTPUT: {path!r} is a folder; give a file name such as {path!r}/model.onnx"
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"OUTPUT: cannot write {path!r}: {os.path.dirname(path)!r} is not a folder"
    problem = unwritable_folder(path)
    return f"OUTPUT: {problem}" if problem else None


def main(argv=None):
    from cnn._cli import IO_ERROR, open_model
    from cnn.io import atomic_write
    args = build_parser().parse_args(argv)
    problem = _check_output(args.output)
    if problem:
        return fail(problem)
    try:
        onnx = _onnx()
    except ImportError as exc:
        return fail(str(exc), 1)
    model, code = open_model(PROG, args.model)
    if model is None:
        return code
    try:
        data = to_onnx(model).SerializeToString()
    except (ExportError, onnx.checker.ValidationError) as exc:
        return fail(f"MODEL: {args.model}: {exc}", 1)
    try:
        diff = max_difference(model, data)
    except ImportError:
        check = "onnxruntime not installed: not run (pip install onnxruntime)"
    else:
        if not diff <= VERIFY_TOLERANCE:
            return fail(f"the ONNX graph's probabilities differ from the model's by {diff:.3g} "
                        f"(more than {VERIFY_TOLERANCE:g}); nothing written", 1)
        check = f"onnxruntime max |difference| {diff:.2g} on {VERIFY_IMAGES} random images"
    try:
        atomic_write(args.output, lambda f: f.write(data))
    except OSError as exc:
        return fail(f"OUTPUT: writing {args.output!r} failed: {exc.strerror or exc}",
                    IO_ERROR)
    C, H, W = model.input_shape
    print(f"{args.output}: {model.name}, input [N, {C}, {H}, {W}], {model.num_classes} classes, "
          f"{len(data):,} bytes, opset {OPSET}; {check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
