"""The peers cnn is compared with: PyTorch (NCHW and channels_last) and ONNX
Runtime, always run in child processes.

Why children: ``import cnn`` sets OMP_WAIT_POLICY=PASSIVE for its OpenMP
runtime when the user has not, and in the same process that would also slow
PyTorch's; and torch's own libgomp must load before ours. So a child gets the
caller's environment as it was before ``import cnn`` (``child_env``), imports
torch first, then runs one ``*_child`` function of this module and prints its
result as JSON (``child_call``). The peers are never dependencies: the
callers check ``cnn.bench.report.package_version`` before asking.
"""
import json
import os
import subprocess
import sys

import numpy as np

from cnn.bench.report import error_text
from cnn.bench.timing import epoch_seconds, median_ms
from cnn.bench.workloads import EPOCH_IMAGES, recipe_data


def child_env():
    """The caller's environment as it was before ``import cnn`` defaulted
    OMP_WAIT_POLICY (PASSIVE slows PyTorch's OpenMP runtime)."""
    import cnn
    env = dict(os.environ)
    if cnn.OMP_WAIT_POLICY_DEFAULTED:
        env.pop("OMP_WAIT_POLICY", None)
    return env


def last_line(text):
    """The last non-blank line of ``text`` (a child's result or its error)."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def child_call(func, kwargs, preload=("torch",), timeout=900):
    """``cnn.bench.peers.<func>(**kwargs)`` in a child Python with the caller's own
    environment; the modules in ``preload`` (torch and its libgomp) load before
    cnn. Returns the JSON the function's result became."""
    code = ["import json, sys"]
    for name in preload:
        code.append(f"import {name}")
    code += [f"from cnn.bench.peers import {func}",
             f"result = {func}(**json.loads({json.dumps(kwargs)!r}))",
             "print(json.dumps(result))"]
    proc = subprocess.run([sys.executable, "-c", "\n".join(code)], env=child_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child process exited with code {proc.returncode}: "
                           f"{last_line(proc.stderr) or last_line(proc.stdout)}")
    try:
        return json.loads(last_line(proc.stdout))
    except ValueError:
        raise RuntimeError(f"child process printed no result: "
                           f"{last_line(proc.stdout) or last_line(proc.stderr)!r}") from None


# ---------------------------------------------------------------- the twins


def _torch_net(arch, seed=0, cnn_init=False):
    """The PyTorch twin of our ``lenet5`` or ``convnet``; with ``cnn_init`` it
    starts from exactly the weights ``build(seed=seed)`` gives our model (He
    normal, Glorot uniform for the classifier, zero biases)."""
    import torch
    from torch import nn
    torch.manual_seed(seed)
    if arch == "lenet5":
        net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                            nn.Linear(84, 10))
    elif arch == "convnet":
        net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    else:
        raise ValueError(f"no PyTorch twin for architecture {arch!r} (lenet5, convnet)")
    if cnn_init:
        from cnn.architectures import build_architecture
        ours = build_architecture(arch).build(seed=seed, backend="python")
        theirs = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
        mine = [layer for layer in ours.layers if "w" in layer.params]
        with torch.no_grad():
            for m, layer in zip(theirs, mine, strict=True):
                m.weight.copy_(torch.from_numpy(layer.params["w"]))
                m.bias.copy_(torch.from_numpy(layer.params["b"]))
    return net


def _cnn_twin(arch, net=None):
    """Our ``arch`` built from seed 0, holding the weights of the PyTorch twin
    ``net`` when there is one (the reverse of ``_torch_net(cnn_init=True)``)."""
    from cnn.architectures import build_architecture
    model = build_architecture(arch).build(seed=0, backend="python")
    if net is not None:
        theirs = [m for m in net if hasattr(m, "weight")]     # Conv2d and Linear
        mine = [layer for layer in model.layers if "w" in layer.params]
        for m, layer in zip(theirs, mine, strict=True):
            layer.params["w"][...] = m.weight.detach().numpy()
            layer.params["b"][...] = m.bias.detach().numpy()
    return model


def _onnx_bytes(arch, net):
    """(ONNX model bytes, how it was made): torch.onnx.export of the PyTorch
    module when that works (its new exporter needs onnxscript, the TorchScript
    one is the fallback), else cnn.export's graph of our model holding the same
    weights (our own seed-0 weights when PyTorch is missing). cnn.export's graph
    adds Softmax and ArgMax outputs to the logits: microseconds at batch 64."""
    import io
    import warnings
    problems = []
    if net is not None:
        import torch
        x = torch.randn(1, 1, 28, 28)
        for how, kwargs in (("torch.onnx.export (dynamo)", {}),
                            ("torch.onnx.export (TorchScript)",
                             dict(dynamo=False, dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}))):
            buf = io.BytesIO()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if kwargs:
                        torch.onnx.export(net, (x,), buf, input_names=["x"],
                                          output_names=["y"], **kwargs)
                    else:
                        torch.onnx.export(net, (x,), buf, input_names=["x"],
                                          output_names=["y"],
                                          dynamic_shapes={"input": {0: torch.export.Dim("N")}})
                data = buf.getvalue()
                if data:
                    return data, how
                problems.append(f"{how}: wrote nothing")
            except Exception as exc:
                problems.append(f"{how}: {type(exc).__name__}")
    from cnn.export import to_onnx
    data = to_onnx(_cnn_twin(arch, net)).SerializeToString()
    if net is not None:
        return data, "cnn.export of the torch weights (" + "; ".join(problems) + ")"
    return data, "cnn.export of cnn's weights (no torch)"


# ------------------------------------------------------------ training epoch


def _train_step_torch(arch, threads, batch, seed=0, channels_last=False):
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    net = _torch_net(arch, seed)
    x = torch.randn(batch, 1, 28, 28)
    if channels_last:   # often PyTorch's fastest CPU layout for convolutions
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    y = torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
    return step


def _torch_epoch_child(arch, threads, batch, sample_steps, full_epoch, channels_last):
    step = _train_step_torch(arch, threads, batch, channels_last=channels_last)
    return epoch_seconds(step, (EPOCH_IMAGES + batch - 1) // batch, sample_steps, full_epoch)


def torch_epoch_seconds(arch, threads, batch, sample_steps, full_epoch, channels_last):
    """A PyTorch epoch time measured in a child process with the user's own
    environment: cnn sets OMP_WAIT_POLICY=PASSIVE for its OpenMP runtime when
    the user has not, and in this process that would also slow PyTorch's."""
    return float(child_call("_torch_epoch_child", dict(
        arch=arch, threads=threads, batch=batch, sample_steps=sample_steps,
        full_epoch=bool(full_epoch), channels_last=bool(channels_last))))


# ----------------------------------------------------------------- inference


def _infer_child(arch, threads, repeat, min_time, layouts, ort, batches):
    """In a child process: {column: {str(batch): median ms} or {"error": ...}} for
    PyTorch in ``layouts`` (torch, torch-cl) and ONNX Runtime when ``ort``."""
    result = {}
    net = None
    if layouts:
        import torch
        torch.set_num_threads(threads)
        for col in layouts:
            try:
                model = _torch_net(arch).eval()
                fig = {}
                for batch in batches:
                    x = torch.randn(batch, 1, 28, 28)
                    if col == "torch-cl":
                        model = model.to(memory_format=torch.channels_last)
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.inference_mode():
                        fig[str(batch)] = median_ms(lambda model=model, x=x: model(x),
                                                    repeat, min_time)
                result[col] = fig
            except Exception as exc:
                result[col] = {"error": error_text(exc)}
        net = _torch_net(arch).eval()
    if ort:
        try:
            import onnxruntime as ort_mod
            data, how = _onnx_bytes(arch, net)
            result["onnx_export"] = how
            opts = ort_mod.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort_mod.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort_mod.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort_mod.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            fig = {}
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(
                    np.float32)
                fig[str(batch)] = median_ms(lambda x=x: sess.run(None, {name: x}), repeat, min_time)
            result["onnxrt"] = fig
        except Exception as exc:
            result["onnxrt"] = {"error": error_text(exc)}
    return result


# ------------------------------------------------------------------ accuracy


def _torch_accuracy_child(epochs, threads, data_dir=None, seed=0):
    """In a child process: the same recipe in PyTorch (same split, normalisation,
    initial weights, shuffling, Adam and per-step cosine schedule); test accuracy."""
    import time

    import torch
    import torch.nn.functional as F

    from cnn.optim import Schedule
    torch.set_num_threads(threads)
    _, x_tr, y_tr, _, _, x_te, y_te = recipe_data(data_dir, seed)
    net = _torch_net("convnet", seed, cnn_init=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    schedule = Schedule(1e-3, "cosine", epochs=epochs)
    rng = np.random.default_rng(seed + 1)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    n, batch = len(x_tr), 64
    steps = (n + batch - 1) // batch
    start = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = schedule(epoch + step / steps)
            idx = order[step * batch:(step + 1) * batch]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(xt[idx]), yt[idx]).backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    net.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x_te), 1000):
            logits = net(torch.from_numpy(x_te[i:i + 1000]))
            correct += int((logits.argmax(1).numpy() == y_te[i:i + 1000]).sum())
    return {"test_acc": correct / len(x_te), "seconds": seconds}
