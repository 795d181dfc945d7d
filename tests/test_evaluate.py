"""python -m cnn.evaluate in-process on small IDX folders: precision, recall and F1
against a hand computation, the confusion-matrix plot, a folder of test files only.

(The end-to-end run on Fashion-MNIST with a CLI-trained model is in test_cli.py.)
"""
import json
import os

import numpy as np
import pytest

from cnn.architectures import build_architecture
from cnn.data import DataError, load_dataset
from cnn.evaluate import averages, confusion_figure, main, per_class
from cnn.io import load_model, save_model

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]

# 4 classes: "c" is in the test set but never predicted, "d" neither.
HAND = np.array([[5, 1, 0, 0],
                 [2, 3, 0, 0],
                 [1, 0, 0, 0],
                 [0, 0, 0, 0]])


def test_precision_recall_f1_by_hand():
    rows = per_class(HAND, ["a", "b", "c", "d"])
    # a: 5 of its 6 images right, 5 of the 8 predicted "a" right
    assert rows[0]["recall"] == pytest.approx(5 / 6)
    assert rows[0]["precision"] == pytest.approx(5 / 8)
    assert rows[0]["f1"] == pytest.approx(2 * (5 / 8) * (5 / 6) / (5 / 8 + 5 / 6))
    assert rows[1]["recall"] == pytest.approx(3 / 5)
    assert rows[1]["precision"] == pytest.approx(3 / 4)
    assert rows[1]["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert (rows[2]["recall"], rows[2]["precision"], rows[2]["f1"]) == (0.0, None, 0.0)
    assert (rows[3]["recall"], rows[3]["precision"], rows[3]["f1"]) == (None, None, None)
    assert [r["accuracy"] for r in rows] == [r["recall"] for r in rows]
    assert [(r["correct"], r["total"], r["predicted"]) for r in rows] == \
        [(5, 6, 8), (3, 5, 4), (0, 1, 0), (0, 0, 0)]

    avg = averages(rows)
    f1_a, f1_b = 2 * (5 / 8) * (5 / 6) / (5 / 8 + 5 / 6), 2 * 0.75 * 0.6 / 1.35
    # macro: every class alike, an undefined ratio as 0 (scikit-learn's zero_division=0)
    assert avg["macro"]["precision"] == pytest.approx((5 / 8 + 3 / 4) / 4)
    assert avg["macro"]["recall"] == pytest.approx((5 / 6 + 3 / 5) / 4)
    assert avg["macro"]["f1"] == pytest.approx((f1_a + f1_b) / 4)
    # weighted by images per class (6, 5, 1, 0): weighted recall is the accuracy
    assert avg["weighted"]["precision"] == pytest.approx((6 * 5 / 8 + 5 * 3 / 4) / 12)
    assert avg["weighted"]["recall"] == pytest.approx(8 / 12)
    assert avg["weighted"]["f1"] == pytest.approx((6 * f1_a + 5 * f1_b) / 12)
    assert avg["macro"]["support"] == avg["weighted"]["support"] == 12


def test_against_scikit_learn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")   # not a dependency: only if present
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 6, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 5, 300))
    y_pred[y_pred == 5] = 0                                    # 5 is never predicted
    confusion = np.zeros((7, 7), np.int64)                     # 6 absent and never predicted
    np.add.at(confusion, (y_true, y_pred), 1)
    rows = per_class(confusion, list("abcdefg"))
    p, r, f, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=range(7), zero_division=0)
    for k, row in enumerate(rows):
        assert (row["precision"] or 0) == pytest.approx(p[k])
        assert (row["recall"] or 0) == pytest.approx(r[k])
        assert (row["f1"] or 0) == pytest.approx(f[k])
        assert row["total"] == support[k]
    for kind in ("macro", "weighted"):
        p, r, f, _ = metrics.precision_recall_fscore_support(
            y_true, y_pred, labels=range(7), average=kind, zero_division=0)
        got = averages(rows)[kind]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f))


def test_confusion_figure_names_the_classes_and_counts_every_cell():
    fig = confusion_figure(HAND, ["a", "b", "c", "d"], "m.npz (convnet): test accuracy 0.6667")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c", "d"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert ax.get_title() == "m.npz (convnet): test accuracy 0.6667"
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
             for t in ax.texts}
    assert cells == {(i, j): str(HAND[i, j]) for i in range(4) for j in range(4)}


def test_confusion_figure_of_many_classes_stays_bounded():
    K = 300
    fig = confusion_figure(np.eye(K, dtype=np.int64), [f"class{k}" for k in range(K)], "t")
    width, height = fig.get_size_inches() * fig.dpi
    assert width <= 2600 and height <= 2400
    ax = fig.axes[0]
    assert not ax.texts                                  # no 90,000 cell labels
    assert len(ax.get_xticklabels()) <= 60


# --------------------------------------------------------------------- the command


@pytest.fixture
def weights(tmp_path):
    """A lenet5 with random weights for 28x28 grayscale, 10 Fashion-MNIST classes."""
    model = build_architecture("lenet5", 10, class_names=CLASSES).build(seed=3)
    path = tmp_path / "lenet.npz"
    save_model(path, model)
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_report_plot_and_json_agree_with_the_model(weights, make_idx_dir, tmp_path, capsys):
    data = make_idx_dir("data", n_test=60)
    test = load_dataset(data)
    pred = load_model(weights).predict(test.test_images)
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (test.test_labels, pred), 1)

    plot = tmp_path / "plots" / "cm"                         # .png added, folder made
    code, out, err = run(capsys, weights, "--data-dir", data, "--json", "--plot", plot)
    assert code == 0, err
    report = json.loads(out)
    assert report["confusion_matrix"] == confusion.tolist()
    expected = per_class(confusion, CLASSES)
    assert report["per_class"] == json.loads(json.dumps(expected))
    assert report["averages"] == json.loads(json.dumps(averages(expected)))
    assert report["plot"] == f"{plot}.png"
    png = (tmp_path / "plots" / "cm.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(tmp_path / "plots" / "cm.png") as image:
        assert image.size[0] >= 600 and image.size[1] >= 500
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["cm.png"]   # no temp files

    code, out, err = run(capsys, weights, "--data-dir", data)
    assert code == 0, err
    assert "per-class accuracy (recall), precision and F1:" in out
    lines = out.splitlines()
    for row in expected:
        line = next(line for line in lines if line.startswith(f"  {row['label']} {row['class']}  "))
        values = line.split()[-4:]
        assert values[-1] == f"{row['correct']}/{row['total']}", line
        for value, metric in zip(values, ("recall", "precision", "f1")):
            assert value == ("n/a" if row[metric] is None else f"{row[metric]:.4f}"), line
    macro = next(line for line in lines if line.strip().startswith("macro average"))
    assert macro.split()[-3:] == [f"{report['averages']['macro'][m]:.4f}"
                                  for m in ("recall", "precision", "f1")]
    assert "weighted average" in out and "confusion matrix plot" not in out


def test_a_folder_of_only_the_test_files_evaluates(weights, make_idx_dir, capsys):
    full = make_idx_dir("full", n_test=30)
    code, expected, err = run(capsys, weights, "--data-dir", full, "--json")
    assert code == 0, err
    test_only = make_idx_dir("test-only", n_test=30)
    for name in os.listdir(test_only):
        if name.startswith("train-"):
            os.unlink(test_only / name)
    code, out, err = run(capsys, weights, "--data-dir", test_only, "--json")
    assert code == 0, err
    got, expected = json.loads(out), json.loads(expected)
    for key in ("accuracy", "loss", "per_class", "confusion_matrix", "averages"):
        assert got[key] == expected[key], key

    data = load_dataset(test_only, test_only=True)
    assert data.train_images.shape == (0, 28, 28) and data.train_labels.shape == (0,)
    assert data.test_images.shape == (30, 28, 28) and data.image_shape == (28, 28)
    with pytest.raises(DataError) as info:                     # training needs all four
        load_dataset(test_only)
    assert "missing 2 of the 4" in str(info.value)
    assert "cnn.evaluate needs only the two t10k files" in str(info.value)


def test_a_folder_without_the_test_files_is_refused_clearly(weights, make_idx_dir, capsys):
    train_only = make_idx_dir("train-only")
    for name in os.listdir(train_only):
        if name.startswith("t10k-"):
            os.unlink(train_only / name)
    code, out, err = run(capsys, weights, "--data-dir", train_only)
    assert code == 2 and not out
    assert "--data-dir" in err and "missing 2 of the 2 test IDX files" in err, err
    assert "t10k-images-idx3-ubyte" in err and "t10k-labels-idx1-ubyte" in err, err


@pytest.mark.parametrize("plot, words", [
    ("{tmp}", ["is a folder", "confusion.png"]),
    ("{tmp}/cm.jpg", ["PNG", ".png"]),
    ("{tmp}/a-file/cm.png", ["cannot write in"]),
])
def test_bad_plot_paths_are_refused_before_evaluating(weights, make_idx_dir, tmp_path, capsys,
                                                      monkeypatch, plot, words):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr("cnn.evaluate.evaluate", lambda *a, **k: pytest.fail("evaluated"))
    code, out, err = run(capsys, weights, "--data-dir", make_idx_dir(),
                         "--plot", plot.format(tmp=tmp_path))
    assert code == 2 and not out
    assert err.startswith("cnn.evaluate: error: --plot: "), err
    for word in words:
        assert word in err, (word, err)


def test_a_failed_plot_write_keeps_the_old_file(weights, make_idx_dir, tmp_path, capsys,
                                                monkeypatch):
    plot = tmp_path / "cm.png"
    plot.write_bytes(b"the previous plot")

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("cnn.io.os.fsync", disk_full)
    code, out, err = run(capsys, weights, "--data-dir", make_idx_dir(), "--plot", plot)
    assert code == 74, err
    assert "--plot: cannot write" in err and "No space left on device" in err, err
    assert plot.read_bytes() == b"the previous plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "data", "lenet.npz"]
