"""The training loop on real Fashion-MNIST, determinism, divergence, and
continuing from a mid-epoch position (the CLI's resume: tests/test_train.py)."""
import copy
import io
import os

import numpy as np
import pytest

from cnn.architectures import build_architecture
from cnn.backends import get_backend
from cnn.data import DEFAULT_DATA_DIR, Normalizer, load_dataset
from cnn.fit import evaluate_logits, fit
from cnn.optim import SGD, Schedule, make_optimizer


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


@pytest.fixture(scope="module")
def noise():
    """Generated data in the fixture's format (no data set needed): 320 training
    and 64 validation images of normalised noise, 10 classes."""
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((320, 1, 28, 28)).astype(np.float32),
            "y": np.arange(320) % 10,
            "test_x": rng.standard_normal((64, 1, 28, 28)).astype(np.float32),
            "test_y": np.arange(64) % 10, "fill": -1.0}


# Batch norm, dropout (the model's RNG) and augmentation (the loop's RNG).
SPEC = "conv8k3p1-bn-relu-maxpool2-conv8k3-bn-relu-maxpool2-flatten-dropout0.3-dense10"
AUGMENT = {"shift": 2, "flip": True}


def test_same_seed_and_threads_give_bit_identical_weights(noise):
    """Batch norm, dropout and augmentation on two threads: every random draw comes
    from the seeds, so two runs agree bit for bit; another seed does not."""
    def train(seed):
        model = build_architecture(SPEC).build(seed=0, threads=2)
        history, _ = run_fit(model, noise, 320, 1, seed=seed, loss_threads=2,
                             augment=dict(AUGMENT, fill=noise["fill"]))
        return model.state(), history
    (a, ha), (b, hb), (c, _) = train(5), train(5), train(6)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_fit_continues_from_a_mid_epoch_position_bit_for_bit(noise):
    """What the CLI checkpoints within an epoch (model, optimizer, both RNGs and
    ``position``) is all the loop needs: continuing from it in a fresh model
    gives the uninterrupted run's weights and metrics exactly."""
    augment = dict(AUGMENT, fill=noise["fill"])
    model = build_architecture(SPEC).build(seed=0, threads=SERIAL)
    saved = {}

    def snapshot(epoch, done, position):
        if (epoch, done) == (1, 3):             # epoch 2 of 2, after its 3rd step
            saved.update(position=position(), state=copy.deepcopy(model.state()),
                         optimizer=copy.deepcopy(optimizer.state_dict()),
                         rng=copy.deepcopy(rng.bit_generator.state),
                         model_rng=copy.deepcopy(model.rng.bit_generator.state))
    optimizer = make_optimizer("adam", model, 2e-3)
    rng = np.random.default_rng(1)
    ops = get_backend()
    loss_fn = lambda z, y: ops.softmax_cross_entropy(z, y, threads=SERIAL)  # noqa: E731
    train, val = (noise["x"], noise["y"]), (noise["test_x"], noise["test_y"])
    common = dict(epochs=2, batch_size=64, augment=augment, progress=False)
    history = fit(model, loss_fn, optimizer, Schedule(2e-3, "cosine", epochs=2), train, val,
                  rng=rng, on_step_end=snapshot, stream=io.StringIO(), **common)
    assert saved["position"]["step"] == 3 and saved["position"]["epoch"] == 1

    resumed = build_architecture(SPEC).build(seed=0, threads=SERIAL)
    resumed.load_state(saved["state"])
    resumed.rng.bit_generator.state = saved["model_rng"]
    opt2 = make_optimizer("adam", resumed, 2e-3)
    opt2.load_state_dict(*saved["optimizer"])
    rng2 = np.random.default_rng(1)
    rng2.bit_generator.state = saved["rng"]
    stream = io.StringIO()
    history2 = fit(resumed, loss_fn, opt2, Schedule(2e-3, "cosine", epochs=2), train, val,
                   rng=rng2, position=saved["position"], stream=stream, **common)
    assert stream.getvalue().startswith("Epoch 2/2 - ") and "Epoch 1/" not in stream.getvalue()
    for key, value in model.state().items():
        np.testing.assert_array_equal(resumed.state()[key], value, err_msg=key)
    assert history2[0]["loss"] == history[1]["loss"] and history2[0]["acc"] == history[1]["acc"]

    bad = dict(saved["position"], step=5)    # an epoch of 5 steps has no position 5
    with pytest.raises(ValueError, match="step 5"):
        fit(resumed, loss_fn, opt2, Schedule(2e-3), train, val, rng=rng2, position=bad,
            stream=io.StringIO(), **common)


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
