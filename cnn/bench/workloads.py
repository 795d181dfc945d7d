"""What cnn runs for the benchmark's figures: a training step on random data
and the ``python -m cnn.train`` recipe (its data and a full run).

The PyTorch twins of these live in cnn.bench.peers and read the same data
(``recipe_data``) so that the two sides train on identical inputs.
"""
import sys
import time

import numpy as np

from cnn.backends import get_backend

# Fashion-MNIST's training set: an "epoch" of every training figure.
EPOCH_IMAGES = 60000


def train_step_cnn(arch, backend, threads, batch, seed=0):
    """A closure running one training step of ``arch`` on random data."""
    from cnn.architectures import build_architecture
    from cnn.optim import make_optimizer
    model = build_architecture(arch).build(seed=seed, backend=backend, threads=threads)
    optimizer = make_optimizer("sgd", model, 0.01)
    loss_fn = get_backend(backend).softmax_cross_entropy
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        logits = model.forward(x, training=True)
        _, dlogits = loss_fn(logits, y)
        model.backward(dlogits, input_grad=False)
        optimizer.step()
    return step


def recipe_data(data_dir, seed):
    """The data of `python -m cnn.train`'s defaults: 10% validation split with
    ``seed``, scalar normalisation fitted on the training part."""
    from cnn.data import Normalizer, load_dataset, train_val_split
    data = load_dataset(data_dir)
    tr_x, tr_y, va_x, va_y = train_val_split(data.train_images, data.train_labels, 0.1, seed)
    norm = Normalizer.fit(tr_x)
    return (data, norm(tr_x), tr_y.astype(np.int64), norm(va_x), va_y.astype(np.int64),
            norm(data.test_images), data.test_labels.astype(np.int64))


def cnn_accuracy(epochs, threads, data_dir=None, seed=0, stream=None):
    """Test accuracy of convnet after ``epochs`` epochs of `python -m cnn.train`'s
    default recipe (Adam lr 1e-3, per-step cosine schedule, batch 64, seed 0)."""
    from cnn.architectures import build_architecture
    from cnn.fit import evaluate_logits, fit
    from cnn.optim import Schedule, make_optimizer
    data, x_tr, y_tr, x_va, y_va, x_te, y_te = recipe_data(data_dir, seed)
    model = build_architecture("convnet", data.num_classes, (1,) + tuple(data.image_shape))
    model.build(seed=seed, backend="cython", threads=threads)
    optimizer = make_optimizer("adam", model, 1e-3)
    schedule = Schedule(1e-3, "cosine", epochs=epochs, step_size=max(1, epochs // 3))
    start = time.perf_counter()
    fit(model, get_backend("cython").softmax_cross_entropy, optimizer, schedule,
        (x_tr, y_tr), (x_va, y_va), epochs=epochs, batch_size=64,
        rng=np.random.default_rng(seed + 1), progress=False, stream=stream or sys.stderr)
    _, acc = evaluate_logits(model, x_te, y_te)
    return {"test_acc": acc, "seconds": time.perf_counter() - start}
