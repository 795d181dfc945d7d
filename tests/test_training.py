"""The training loop on real Fashion-MNIST, determinism, divergence, and resuming
``python -m cnn.train`` runs from checkpoints."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnn.architectures import build_architecture
from cnn.backends import get_backend
from cnn.data import DEFAULT_DATA_DIR, Normalizer, load_dataset
from cnn.io import read_model_file
from cnn.optim import SGD, Schedule, make_optimizer
from cnn.training import evaluate_logits, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fashion():
    """2000 training and 1000 test images of the real Fashion-MNIST, normalised."""
    data_dir = os.environ.get("CNN_DATA_DIR") or DEFAULT_DATA_DIR
    if not os.path.isdir(data_dir):
        pytest.skip(f"Fashion-MNIST is not installed in {data_dir}")
    data = load_dataset(data_dir)
    x, y = data.train_images[:2000], data.train_labels[:2000].astype(np.int64)
    norm = Normalizer.fit(x)
    return {"x": norm(x), "y": y, "norm": norm,
            "test_x": norm(data.test_images[:1000]),
            "test_y": data.test_labels[:1000].astype(np.int64)}


# One kernel thread unless a test is about threads: the compiled kernels open a
# parallel region even for small batches, which is slow on a busy machine.
SERIAL = 1


def run_fit(model, data, n, epochs, opt="adam", lr=2e-3, seed=1, augment=None,
            backend=None, loss_threads=SERIAL, **kwargs):
    optimizer = make_optimizer(opt, model, lr)
    stream = io.StringIO()
    ops = get_backend(backend)
    history = fit(model,
                  lambda z, y: ops.softmax_cross_entropy(z, y, threads=loss_threads),
                  optimizer,
                  Schedule(lr, "cosine", epochs=epochs), (data["x"][:n], data["y"][:n]),
                  (data["test_x"], data["test_y"]), epochs=epochs, batch_size=64,
                  rng=np.random.default_rng(seed), augment=augment, progress=False,
                  stream=stream, **kwargs)
    return history, stream.getvalue()


def test_fit_learns_fashion_mnist(fashion):
    model = build_architecture("lenet5").build(seed=0, threads=SERIAL)
    loss0, acc0 = evaluate_logits(model, fashion["test_x"], fashion["test_y"])
    assert acc0 < 0.3                                     # untrained: near chance
    ends = []
    history, out = run_fit(model, fashion, 2000, 2,
                           on_epoch_end=lambda e, m: ends.append((e, dict(m))))
    assert [h["epoch"] for h in history] == [1, 2]
    assert [e for e, _ in ends] == [0, 1] and ends[1][1] == history[1]
    assert history[1]["loss"] < history[0]["loss"] < loss0
    test_loss, test_acc = evaluate_logits(model, fashion["test_x"], fashion["test_y"])
    assert test_loss < loss0 - 1.0, (loss0, test_loss)
    assert test_acc > 0.6, test_acc                       # chance is 0.1
    assert history[1]["acc"] > 0.6
    assert history[1]["val_acc"] == pytest.approx(test_acc)
    assert history[1]["lr"] < 2e-3 * 0.01                 # cosine ran down
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Epoch 1/2 - ") and lines[1].startswith("Epoch 2/2 - ")
    assert "loss: " in lines[1] and "val_acc: " in lines[1] and "lr: " in lines[1]


def test_same_seed_and_threads_give_bit_identical_weights(fashion):
    """Batch norm, dropout and augmentation on two threads: every random draw comes
    from the seeds, so two runs agree bit for bit; another seed does not."""
    spec = "conv8k3p1-bn-relu-maxpool2-conv8k3-bn-relu-maxpool2-flatten-dropout0.3-dense10"

    def train(seed):
        model = build_architecture(spec).build(seed=0, threads=2)
        history, _ = run_fit(model, fashion, 320, 1, seed=seed, loss_threads=2,
                             augment={"shift": 2, "flip": True,
                                      "fill": fashion["norm"].background})
        return model.state(), history
    (a, ha), (b, hb), (c, _) = train(5), train(5), train(6)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_divergence_raises_floating_point_error(fashion):
    model = build_architecture("lenet5").build(seed=0, threads=SERIAL)
    ends = []
    with pytest.raises(FloatingPointError, match="diverged in epoch 1.*lower --lr"):
        with np.errstate(all="ignore"):
            run_fit(model, fashion, 256, 2, opt="sgd", lr=1e4,
                    on_epoch_end=lambda e, m: ends.append(e))
    assert ends == []          # no checkpoint of a diverged model


def test_nan_from_the_last_update_is_not_silent(fashion):
    """The loss of a step is measured before its update: NaN weights produced by
    the last update of an epoch must still stop training."""
    model = build_architecture("lenet5").build(seed=0, threads=SERIAL)
    ops = get_backend()
    steps = 256 // 64
    calls = []

    def poisoned_loss(logits, labels):
        loss, dlogits = ops.softmax_cross_entropy(logits, labels, threads=SERIAL)
        calls.append(loss)
        if len(calls) == steps:          # the last step of epoch 1
            dlogits = dlogits * np.nan
        return loss, dlogits

    optimizer = SGD(model, lr=0.01, momentum=0.0)
    with pytest.raises(FloatingPointError, match="diverged in epoch 1"):
        fit(model, poisoned_loss, optimizer, Schedule(0.01, "constant"),
            (fashion["x"][:256], fashion["y"][:256]), (fashion["x"][:64], fashion["y"][:64]),
            epochs=2, batch_size=64, rng=np.random.default_rng(0), progress=False,
            stream=io.StringIO())
    assert len(calls) == steps and all(np.isfinite(calls))


def test_fit_from_the_last_epoch_does_nothing(fashion):
    model = build_architecture("lenet5").build(seed=0, threads=SERIAL)
    before = {k: v.copy() for k, v in model.state().items()}
    history, out = run_fit(model, fashion, 128, 2, start_epoch=2)
    assert history == [] and out == ""
    for k, v in model.state().items():
        np.testing.assert_array_equal(v, before[k])


def test_evaluate_logits(fashion):
    model = build_architecture("lenet5").build(seed=0, threads=SERIAL)
    loss, acc = evaluate_logits(model, fashion["test_x"][:100], fashion["test_y"][:100])
    logits = model.logits(fashion["test_x"][:100]).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(100), fashion["test_y"][:100]]).mean(),
                                 rel=1e-6)
    assert acc == np.mean(logits.argmax(1) == fashion["test_y"][:100])
    # no validation set: no numbers (None, as JSON has no NaN)
    assert evaluate_logits(model, fashion["test_x"][:0], fashion["test_y"][:0]) == \
        (None, None)


# --------------------------------------------------------------------------- resume (CLI)


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for key in ("CNN_BACKEND", "CNN_NUM_THREADS"):
        env.pop(key, None)
    return env


COMMON = ["--arch", "lenet5", "--progress", "lines", "--threads", str(SERIAL)]


def train_cli(cwd, *args, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "cnn.train", *COMMON, *args], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def weights(path):
    return {k: v for k, v in read_model_file(path)[1].items() if k.startswith("param/")}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)


@pytest.fixture
def start_reference():
    """start_reference(cwd, *args): an uninterrupted run in the background while the
    test goes on; killed at the end of the test if it is still running."""
    procs = []

    def start(cwd, *args):
        proc = subprocess.Popen([sys.executable, "-m", "cnn.train", *COMMON, *args],
                                cwd=cwd, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def finish(proc, timeout=120):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


@pytest.mark.skipif(not os.path.isdir(DEFAULT_DATA_DIR), reason="no Fashion-MNIST")
def test_resume_continues_where_the_first_run_stopped(tmp_path, start_reference):
    # constant lr: with the default cosine schedule the first run (--epochs 1)
    # anneals to zero over one epoch, so it cannot equal the first epoch of a
    # 2-epoch run; the schedule is a function of --epochs by design.
    args = ["--limit", "500", "--schedule", "constant"]
    reference = start_reference(tmp_path, *args, "--epochs", "2", "--out", "ref/m.npz")
    first = train_cli(tmp_path, *args, "--epochs", "1", "--out", "tmp/m.npz")
    assert "Epoch 1/1" in first
    assert read_model_file(tmp_path / "tmp/m.ckpt")[0]["checkpoint"]["epoch"] == 1

    second = train_cli(tmp_path, "--limit", "500", "--resume", "--epochs", "2",
                       "--out", "tmp/m.npz")
    assert "resuming from tmp/m.ckpt after epoch 1" in second
    assert "Epoch 2/2" in second and "Epoch 1/2" not in second
    history = json.loads((tmp_path / "tmp/m.history.json").read_text())
    assert [h["epoch"] for h in history["history"]] == [1, 2]
    assert history["summary"]["epochs"] == 2
    ckpt = read_model_file(tmp_path / "tmp/m.ckpt")[0]["checkpoint"]
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    assert ckpt["args"]["schedule"] == "constant"       # kept from the first run

    ref_out = finish(reference)
    assert "Epoch 1/2" in ref_out and "Epoch 2/2" in ref_out
    # bit-identical: same seed, same threads, model/optimizer/RNG state restored
    assert_same_weights(tmp_path / "tmp/m.npz", tmp_path / "ref/m.npz")
    ref_history = json.loads((tmp_path / "ref/m.history.json").read_text())["history"]
    assert [h["loss"] for h in history["history"]] == [h["loss"] for h in ref_history]


@pytest.mark.skipif(not os.path.isdir(DEFAULT_DATA_DIR), reason="no Fashion-MNIST")
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, start_reference):
    # small batches: many steps per epoch, so there is time to interrupt epoch 2
    args = ["--limit", "500", "--batch-size", "8", "--epochs", "3"]
    reference = start_reference(tmp_path, *args, "--out", "ref/m.npz")
    ckpt = tmp_path / "run" / "m.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "cnn.train", *COMMON, *args,
                             "--out", "run/m.npz"], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ckpt.exists(), "no checkpoint appeared"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "interrupted" in err and "--resume" in err
    assert "Traceback" not in err
    saved_epoch = read_model_file(ckpt)[0]["checkpoint"]["epoch"]
    assert saved_epoch in (1, 2)
    assert f"Epoch {saved_epoch}/3" in out and "Epoch 3/3" not in out
    assert not (tmp_path / "run" / "m.npz").exists()
    assert [p.name for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")] == []

    resumed = train_cli(tmp_path, "--resume", "--out", "run/m.npz", "--epochs", "3")
    assert f"after epoch {saved_epoch}" in resumed
    assert "Epoch 3/3" in resumed and f"Epoch {saved_epoch}/3" not in resumed
    history = json.loads((tmp_path / "run/m.history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    finish(reference)
    assert_same_weights(tmp_path / "run/m.npz", tmp_path / "ref/m.npz")
