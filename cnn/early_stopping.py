"""Early stopping and keeping the best epoch, as Keras' ``EarlyStopping(monitor,
patience, restore_best_weights)`` does.

After every epoch :meth:`EarlyStopping.update` reads the monitored validation
metric (``val_loss``: lower is better; ``val_acc``: higher). An epoch better
than the best so far (by more than ``min_delta``) becomes the best, and with
``keep="best"`` its weights are copied; after ``patience`` epochs without one,
training stops (no patience: it never stops early, but ``keep="best"`` still
keeps the best epoch). :meth:`finish` then puts the kept epoch's weights back
into the model. The state is JSON plus the best weights, so a checkpoint
carries it and a resumed run stops where an uninterrupted one would.
"""
import numpy as np

MONITORS = {"val_loss": "min", "val_acc": "max"}


class EarlyStopping:
    def __init__(self, monitor="val_loss", patience=None, keep="last", min_delta=0.0):
        if monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {', '.join(MONITORS)}, got {monitor!r}")
        if keep not in ("last", "best"):
            raise ValueError(f"keep must be 'last' or 'best', got {keep!r}")
        self.monitor, self.patience, self.keep, self.min_delta = monitor, patience, keep, \
            min_delta
        self.best = None            # the best value so far
        self.best_epoch = None      # 1-based
        self.wait = 0               # epochs since the best
        self.stopped_epoch = None   # the epoch after which training stopped early
        self.best_state = None      # {key: array}, with keep="best"

    def _improved(self, value):
        if self.best is None:
            return True
        if MONITORS[self.monitor] == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, model, metrics):
        """Record one epoch's metrics; True when training should stop now."""
        value = metrics.get(self.monitor)
        if value is None:
            raise ValueError(f"early stopping monitors {self.monitor}, but there is no "
                             f"validation set")
        if self._improved(value):
            self.best, self.best_epoch, self.wait = float(value), int(metrics["epoch"]), 0
            if self.keep == "best":
                self.best_state = {k: v.copy() for k, v in model.state().items()}
            return False
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience:
            self.stopped_epoch = int(metrics["epoch"])
            return True
        return False

    def finish(self, model, last_epoch):
        """Put the kept epoch's weights in ``model``; returns the kept epoch."""
        if self.keep == "best" and self.best_state is not None \
                and self.best_epoch != last_epoch:
            model.load_state(self.best_state)
            return self.best_epoch
        return last_epoch

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self):
        """(JSON-able dict, {name: array}) of the state."""
        meta = {"monitor": self.monitor, "patience": self.patience, "keep": self.keep,
                "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}
        return meta, dict(self.best_state or {})

    def load_state_dict(self, meta, arrays):
        self.best, self.best_epoch = meta.get("best"), meta.get("best_epoch")
        self.wait, self.stopped_epoch = int(meta.get("wait", 0)), meta.get("stopped_epoch")
        self.best_state = {k: np.array(v) for k, v in arrays.items()} or None

    def describe(self):
        """The summary entry of the weights file."""
        return {"monitor": self.monitor, "patience": self.patience, "keep": self.keep,
                "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch}
