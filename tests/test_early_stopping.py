"""cnn.early_stopping: when to stop and which epoch's weights to keep."""
import numpy as np
import pytest

from cnn.early_stopping import EarlyStopping


class FakeModel:
    """A model whose one weight is the number of the epoch that produced it."""

    def __init__(self):
        self.w = np.zeros(3)

    def state(self):
        return {"0.w": self.w}

    def load_state(self, arrays):
        self.w[...] = arrays["0.w"]


def run(stopper, values, key="val_loss"):
    model, stopped_at = FakeModel(), None
    for epoch, value in enumerate(values, 1):
        model.w[...] = epoch
        if stopper.update(model, {"epoch": epoch, key: value}):
            stopped_at = epoch
            break
    return model, stopped_at


def test_stops_after_patience_epochs_without_improvement_and_keeps_the_best():
    stopper = EarlyStopping("val_loss", patience=2, keep="best")
    model, stopped = run(stopper, [1.0, 0.8, 0.9, 0.85, 0.7, 0.6])
    assert stopped == 4 and stopper.stopped_epoch == 4 and stopper.best_epoch == 2
    assert stopper.finish(model, 4) == 2 and (model.w == 2).all()


def test_accuracy_is_maximised_and_last_keeps_the_last_weights():
    stopper = EarlyStopping("val_acc", patience=1, keep="last")
    model, stopped = run(stopper, [0.5, 0.7, 0.6], key="val_acc")
    assert stopped == 3 and stopper.best == 0.7 and stopper.best_epoch == 2
    assert stopper.finish(model, 3) == 3 and (model.w == 3).all()


def test_keep_best_without_patience_never_stops():
    stopper = EarlyStopping("val_loss", patience=None, keep="best")
    model, stopped = run(stopper, [0.5, 0.4, 0.6, 0.7, 0.8])
    assert stopped is None and stopper.finish(model, 5) == 2 and (model.w == 2).all()


def test_min_delta_counts_tiny_gains_as_none():
    stopper = EarlyStopping("val_loss", patience=2, min_delta=0.01)
    _, stopped = run(stopper, [1.0, 0.995, 0.999])
    assert stopped == 3 and stopper.best_epoch == 1


def test_state_round_trip_continues_identically():
    values = [1.0, 0.8, 0.9, 0.85, 0.95]
    whole = EarlyStopping("val_loss", patience=3, keep="best")
    run(whole, values)
    first = EarlyStopping("val_loss", patience=3, keep="best")
    model, _ = run(first, values[:3])
    meta, arrays = first.state_dict()
    second = EarlyStopping("val_loss", patience=3, keep="best")
    second.load_state_dict(meta, arrays)
    for epoch, value in enumerate(values[3:], 4):
        model.w[...] = epoch
        if second.update(model, {"epoch": epoch, "val_loss": value}):
            break
    assert second.describe() == whole.describe()
    assert second.finish(model, 5) == 2 and (model.w == 2).all()


def test_bad_settings_and_no_validation_set_are_clear_errors():
    with pytest.raises(ValueError, match="monitor must be one of val_loss, val_acc"):
        EarlyStopping("loss")
    with pytest.raises(ValueError, match="keep must be 'last' or 'best'"):
        EarlyStopping(keep="first")
    with pytest.raises(ValueError, match="no validation set"):
        EarlyStopping().update(FakeModel(), {"epoch": 1, "val_loss": None})
