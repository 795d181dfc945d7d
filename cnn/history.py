"""What a training run leaves beside its weights file: the history as JSON, as
CSV (one row per epoch, as Keras' ``CSVLogger`` writes it, for a spreadsheet or
pandas) and as a PNG of the learning curves. Every file is written atomically.

The history is a list of per-epoch dicts (``cnn.fit.fit``): ``epoch``,
``loss``, ``acc``, ``val_loss``, ``val_acc`` (None without a validation set),
``lr``, ``time`` (seconds) and ``curve``, the running training loss and the
learning rate every few steps as [epoch position, loss, lr], so that even a
one-epoch run has curves to look at.
"""
import csv
import io
import json

from cnn.io import atomic_write

CSV_COLUMNS = ("epoch", "loss", "acc", "val_loss", "val_acc", "lr", "time")


def write_json(path, summary, history):
    atomic_write(path, lambda f: f.write(json.dumps(
        {"summary": summary, "history": history}, indent=2).encode()))


def write_csv(path, history):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for h in history:
        writer.writerow(["" if h.get(k) is None else h[k] for k in CSV_COLUMNS])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def plot(path, history, title=None, kept_epoch=None):
    """Loss (with the per-step curve), accuracy and learning rate per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    nan = float("nan")
    epochs = [h["epoch"] for h in history]

    def series(key):
        return [nan if h.get(key) is None else h[key] for h in history]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    steps = [p for h in history for p in h.get("curve") or []]
    if steps:
        ax1.plot([p[0] for p in steps], [p[1] for p in steps], "-", lw=0.8, alpha=0.5,
                 color="C0", label="train (running, per step)")
    ax1.plot(epochs, series("loss"), "o-", color="C0", label="train")
    ax1.plot(epochs, series("val_loss"), "o-", color="C1", label="validation")
    ax1.set(title="loss", xlabel="epoch")
    ax2.plot(epochs, series("acc"), "o-", label="train")
    ax2.plot(epochs, series("val_acc"), "o-", label="validation")
    ax2.set(title="accuracy", xlabel="epoch")
    lr_steps = [p for p in steps if len(p) > 2]
    if lr_steps:
        ax3.plot([p[0] for p in lr_steps], [p[2] for p in lr_steps], "-", color="C2",
                 label="per step")
    else:
        ax3.plot(epochs, series("lr"), "o-", color="C2", label="at the end of the epoch")
    ax3.set(title="learning rate", xlabel="epoch")
    ax3.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (ax1, ax2, ax3):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:    # (one point: show the epoch's span, not 0.96-1.04)
            ax.set_xlim(0, 1.1)
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="grey", ls="--", lw=1, label=f"kept: epoch {kept_epoch}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
