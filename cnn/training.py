"""The training loop: epochs of minibatch SGD with validation, progress output
and a callback at the end of each epoch (where the CLI checkpoints).

Progress looks like Keras's ``fit``: a live tqdm bar with ETA and running
loss/accuracy on a terminal, one line per epoch otherwise:

    Epoch 3/10 - 41.2s - loss: 0.4113 - acc: 0.8702 - val_loss: 0.3921 - val_acc: 0.8611 - lr: 0.00091
"""
import sys
import time

import numpy as np

from cnn.data import augment as augment_batch


def evaluate_logits(model, x, y, batch_size=512):
    """(loss, accuracy) of the model on normalised x and integer labels y; (None,
    None) for an empty set (JSON has no NaN)."""
    if len(x) == 0:
        return None, None
    logits = model.logits(x, batch_size).astype(np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-logp[np.arange(len(y)), y].mean())
    return loss, float((logits.argmax(axis=1) == y).mean())


def format_metrics(metrics):
    parts = []
    for key in ("loss", "acc", "val_loss", "val_acc"):
        if metrics.get(key) is not None:   # None: no validation set
            parts.append(f"{key}: {metrics[key]:.4f}")
    if "lr" in metrics:
        parts.append(f"lr: {metrics['lr']:.3g}")
    return " - ".join(parts)


def fit(model, loss_fn, optimizer, schedule, train, val, *, epochs, batch_size, rng,
        start_epoch=0, augment=None, on_epoch_end=None, progress=None, stream=sys.stdout):
    """Train ``model`` from ``start_epoch`` to ``epochs``.

    train, val: (x normalised float32 (N, C, H, W), y int64 (N,)).
    loss_fn(logits, labels) -> (loss, dlogits); schedule(progress_in_epochs) -> lr.
    augment: None or dict(shift=, flip=, fill=) for cnn.data.augment.
    on_epoch_end(epoch_index, metrics) runs after each epoch (checkpointing).
    progress: True for a live bar, False for one line per epoch, None to pick by
    whether ``stream`` is a terminal. Returns the list of per-epoch metrics.
    """
    x_train, y_train = train
    n = len(x_train)
    steps = (n + batch_size - 1) // batch_size
    if progress is None:
        progress = hasattr(stream, "isatty") and stream.isatty()
    history = []
    for epoch in range(start_epoch, epochs):
        start = time.perf_counter()
        order = rng.permutation(n)
        seen = correct = 0
        loss_sum = 0.0
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=steps, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch",
                       file=stream, leave=True, dynamic_ncols=True)
        for step in range(steps):
            lr = schedule(epoch + step / steps)
            optimizer.lr = lr
            idx = order[step * batch_size:(step + 1) * batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if augment:
                xb = augment_batch(xb, rng, **augment)
            logits = model.forward(xb, training=True)
            loss, dlogits = loss_fn(logits, yb)
            model.backward(dlogits, input_grad=False)
            optimizer.step()
            loss_sum += loss * len(idx)
            correct += int((logits.argmax(axis=1) == yb).sum())
            seen += len(idx)
            if bar is not None:
                bar.update(1)
                if step % 20 == 0 or step == steps - 1:
                    bar.set_postfix_str(f"loss: {loss_sum / seen:.4f} - acc: {correct / seen:.4f}")
        # The loss of a step is computed before its update, so also check the
        # parameters: the last update of the epoch can make them NaN/inf.
        bad = [key for key, param, _, _ in model.parameters() if not np.isfinite(param).all()]
        if not np.isfinite(loss_sum) or bad:
            if bar is not None:
                bar.close()
            what = f"loss is {loss_sum}" if not np.isfinite(loss_sum) else \
                f"parameters {bad} are not finite"
            raise FloatingPointError(f"training diverged in epoch {epoch + 1} ({what}): "
                                     f"lower --lr")
        train_time = time.perf_counter() - start
        val_loss, val_acc = evaluate_logits(model, *val)
        metrics = {"epoch": epoch + 1, "loss": loss_sum / seen, "acc": correct / seen,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.lr,
                   "time": train_time}
        history.append(metrics)
        line = f"Epoch {epoch + 1}/{epochs} - {train_time:.1f}s - {format_metrics(metrics)}"
        if bar is not None:
            bar.set_postfix_str(format_metrics(metrics))
            bar.close()
        else:
            print(line, file=stream, flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return history
