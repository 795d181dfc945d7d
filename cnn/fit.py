"""The training loop: epochs of minibatch SGD with validation, progress output
and callbacks after each step and each epoch (where the CLI checkpoints).

A run can stop and continue anywhere: the loop's whole state is the model, the
optimizer, the shuffling RNG and, mid-epoch, a small JSON-able ``position``
(the RNG state the epoch's batch order was drawn from, the steps done and the
running metrics), so a resumed run computes the same numbers bit for bit.

Progress looks like Keras's ``fit``: a live tqdm bar with ETA and running
loss/accuracy on a terminal, one line per epoch otherwise:

    Epoch 3/5 - 41.2s - loss: 0.4113 - acc: 0.8702 - val_loss: 0.3921 - val_acc: 0.8611 - lr: 0.0009
"""
import contextlib
import sys
import time

import numpy as np

from cnn.data import augment as augment_batch

CURVE_POINTS = 50    # running-loss points recorded per epoch (the learning-curve plot)


def evaluate_logits(model, x, y, batch_size=512, comm=None):
    """(loss, accuracy) of the model on normalised x and integer labels y; (None,
    None) for an empty set (JSON has no NaN). With ``comm`` (cnn.distributed),
    each rank evaluates its slice and the sums are added over the ranks."""
    if len(x) == 0:
        return None, None
    if comm is None:
        loss_sum, correct = _loss_and_correct(model, x, y, batch_size)
        return loss_sum / len(y), correct / len(y)
    lo, hi = comm.share(len(x))
    sums = np.array(_loss_and_correct(model, x[lo:hi], y[lo:hi], batch_size)
                    if hi > lo else (0.0, 0))
    loss_sum, correct = comm.sum_(sums.astype(np.float64), "the evaluation sums")
    return float(loss_sum / len(y)), float(correct / len(y))


def _loss_and_correct(model, x, y, batch_size):
    logits = model.logits(x, batch_size).astype(np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].sum()), int((logits.argmax(axis=1) == y).sum())


def format_metrics(metrics):
    parts = []
    for key in ("loss", "acc", "val_loss", "val_acc"):
        if metrics.get(key) is not None:   # None: no validation set
            parts.append(f"{key}: {metrics[key]:.4f}")
    if "lr" in metrics:
        parts.append(f"lr: {metrics['lr']:.3g}")
    return " - ".join(parts)


def fit(model, loss_fn, optimizer, schedule, train, val, *, epochs, batch_size, rng,
        start_epoch=0, position=None, augment=None, on_epoch_end=None, on_step_end=None,
        progress=None, stream=None, comm=None):
    """Train ``model`` from ``start_epoch`` to ``epochs``.

    train, val: (x normalised float32 (N, C, H, W), y int64 (N,)).
    loss_fn(logits, labels) -> (loss, dlogits); schedule(progress_in_epochs) -> lr.
    augment: None or dict(shift=, flip=, fill=) for cnn.data.augment.
    on_epoch_end(epoch_index, metrics) runs after each epoch (checkpointing);
    when it returns True, training stops there (early stopping).
    on_step_end(epoch_index, steps_done, position) runs after every step but an
    epoch's last; ``position()`` is the mid-epoch state to save with the model,
    optimizer and ``rng`` (call it only when saving: it copies the RNG state).
    position: such a saved state to continue from (``rng`` must hold the state
    saved with it); the run restarts at its epoch and step.
    progress: True for a live bar, False for one line per epoch, None to pick by
    whether ``stream`` is a terminal. Returns the list of per-epoch metrics;
    each holds ``curve``, [epoch position, running loss, learning rate] every
    ~1/CURVE_POINTS of an epoch.

    comm: a cnn.distributed.Communicator to train data-parallel: every rank
    runs this loop with the same arguments and takes its slice of each batch
    (``batch_size`` is the global batch); the metrics are the whole batch's,
    and only rank 0 prints.
    """
    n = len(train[0])
    steps = (n + batch_size - 1) // batch_size
    if stream is None:      # (sys.stdout of now, not of the import: pytest swaps it)
        stream = sys.stdout
    if progress is None:
        progress = hasattr(stream, "isatty") and stream.isatty()
    if comm is not None:
        if n - (steps - 1) * batch_size < comm.size:
            raise ValueError(f"every batch needs at least one image per rank: the last "
                             f"batch of an epoch holds {n - (steps - 1) * batch_size}, "
                             f"there are {comm.size} ranks")
        if comm.rank != 0:
            stream, progress = _Silent(), False
        with _data_parallel(model, comm) as (reducer, randoms):
            return _fit(model, loss_fn, optimizer, schedule, train, val, epochs=epochs,
                        batch_size=batch_size, rng=rng, start_epoch=start_epoch,
                        position=position, augment=augment, on_epoch_end=on_epoch_end,
                        on_step_end=on_step_end, progress=progress, stream=stream,
                        comm=comm, reducer=reducer, randoms=randoms)
    return _fit(model, loss_fn, optimizer, schedule, train, val, epochs=epochs,
                batch_size=batch_size, rng=rng, start_epoch=start_epoch, position=position,
                augment=augment, on_epoch_end=on_epoch_end, on_step_end=on_step_end,
                progress=progress, stream=stream)


class _Silent:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


@contextlib.contextmanager
def _data_parallel(model, comm):
    """The model set up for data-parallel steps: one start (rank 0's
    parameters), batch norm over every rank's slice, dropout drawn for the whole
    batch; the model is left as it was."""
    from cnn.distributed import GradientReducer, SlicedRandom
    reducer = GradientReducer(comm, model)
    reducer.broadcast_parameters()
    synced = [layer for layer in model.layers if hasattr(layer, "comm")]
    drawing = [layer for layer in model.layers if getattr(layer, "rng", None) is not None]
    randoms = {id(layer): SlicedRandom(layer.rng) for layer in drawing}
    try:
        for layer in synced:
            layer.comm = comm
        for layer in drawing:
            layer.rng = randoms[id(layer)]
        yield reducer, list(randoms.values())
    finally:
        for layer in synced:
            layer.comm = None
        for layer in drawing:
            layer.rng = randoms[id(layer)].rng


def _fit(model, loss_fn, optimizer, schedule, train, val, *, epochs, batch_size, rng,
         start_epoch, position, augment, on_epoch_end, on_step_end, progress, stream,
         comm=None, reducer=None, randoms=()):
    x_train, y_train = train
    n = len(x_train)
    steps = (n + batch_size - 1) // batch_size
    every = max(1, steps // CURVE_POINTS)
    if position is not None:
        start_epoch = int(position["epoch"])
        if not 0 < int(position["step"]) < steps:
            raise ValueError(f"the saved position (step {position['step']}) is not inside "
                             f"an epoch of {steps} steps")
    history = []
    for epoch in range(start_epoch, epochs):
        start = time.perf_counter()
        resumed = position if (position is not None and epoch == start_epoch) else None
        epoch_rng = rng.bit_generator.state
        if resumed:
            # Redraw the epoch's batch order from the state it was drawn from,
            # then go on from where the saved run's draws had got to.
            epoch_rng, now = resumed["epoch_rng"], rng.bit_generator.state
            rng.bit_generator.state = epoch_rng
            order = rng.permutation(n)
            rng.bit_generator.state = now
            first_step, seen, correct = int(resumed["step"]), int(resumed["seen"]), \
                int(resumed["correct"])
            loss_sum, time_before = float(resumed["loss_sum"]), float(resumed["time"])
            curve = list(resumed.get("curve", []))
        else:
            order = rng.permutation(n)
            first_step = seen = correct = 0
            loss_sum, time_before = 0.0, 0.0
            curve = []
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=steps, initial=first_step, desc=f"Epoch {epoch + 1}/{epochs}",
                       unit="batch", file=stream, leave=True, dynamic_ncols=True)
        for step in range(first_step, steps):
            lr = schedule(epoch + step / steps)
            optimizer.lr = lr
            idx = order[step * batch_size:(step + 1) * batch_size]
            if comm is None:
                xb, yb = x_train[idx], y_train[idx]
                if augment:
                    xb = augment_batch(xb, rng, **augment)
            else:
                # This rank's slice of the batch; augmentation is drawn for the
                # whole batch on every rank, so the RNG stays the one process's.
                lo, hi = comm.share(len(idx))
                if augment:
                    xb = augment_batch(x_train[idx], rng, **augment)[lo:hi]
                else:
                    xb = x_train[idx[lo:hi]]
                yb = y_train[idx[lo:hi]]
                for random in randoms:
                    random.batch, random.lo, random.hi = len(idx), lo, hi
                comm.step = (epoch + 1, step + 1)
                comm.before_step()
            logits = model.forward(xb, training=True)
            loss, dlogits = loss_fn(logits, yb)
            if comm is None:
                model.backward(dlogits, input_grad=False)
                batch_loss, batch_correct = loss * len(idx), int(
                    (logits.argmax(axis=1) == yb).sum())
            else:
                # dlogits is the slice's mean gradient: weighted by the slice's
                # share of the batch, the sum over the ranks is the batch's mean
                # (batch norm's backward sums over the ranks too, so the weight
                # goes in before backward, not after).
                dlogits *= dlogits.dtype.type(len(yb) / len(idx))
                model.backward(dlogits, input_grad=False)
                batch_loss, batch_correct = reducer.reduce(
                    [loss * len(yb), (logits.argmax(axis=1) == yb).sum()])
                batch_correct = int(round(batch_correct))
            optimizer.step()
            loss_sum += batch_loss
            correct += batch_correct
            seen += len(idx)
            if (step + 1) % every == 0 or step == steps - 1:
                curve.append([round(epoch + (step + 1) / steps, 4), loss_sum / seen, lr])
            if bar is not None:
                bar.update(1)
                if step % 20 == 0 or step == steps - 1:
                    bar.set_postfix_str(f"loss: {loss_sum / seen:.4f} - acc: {correct / seen:.4f}")
            if on_step_end is not None and step < steps - 1:
                def here(epoch=epoch, done=step + 1, epoch_rng=epoch_rng, seen=seen,
                         correct=correct, loss_sum=float(loss_sum), points=len(curve),
                         curve=curve, start=start, time_before=time_before):
                    return {"epoch": epoch, "step": done, "epoch_rng": epoch_rng,
                            "seen": seen, "correct": correct, "loss_sum": loss_sum,
                            "time": time_before + time.perf_counter() - start,
                            "curve": curve[:points]}
                on_step_end(epoch, step + 1, here)
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
        train_time = time_before + time.perf_counter() - start
        val_loss, val_acc = evaluate_logits(model, *val, comm=comm)
        metrics = {"epoch": epoch + 1, "loss": loss_sum / seen, "acc": correct / seen,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.lr,
                   "time": train_time, "curve": curve}
        history.append(metrics)
        line = f"Epoch {epoch + 1}/{epochs} - {train_time:.1f}s - {format_metrics(metrics)}"
        if bar is not None:
            bar.set_postfix_str(format_metrics(metrics))
            bar.close()
        else:
            print(line, file=stream, flush=True)
        stop = on_epoch_end is not None and bool(on_epoch_end(epoch, metrics))
        if comm is not None:      # one decision for every rank: rank 0's
            stop = comm.broadcast(stop, "the early-stopping decision")
        if stop:
            break
    return history
