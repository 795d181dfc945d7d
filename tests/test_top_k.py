"""The documented tie order of the top classes: equal probabilities keep the lower
label first, as argmax does (a trained model gives exactly-zero float32
probabilities, so real rows hold ties). Checked wherever classes are ranked:
cnn.predict's top_k and CLI, and the model API. The service's /predict and V2
are in tests/service/test_top_k.py."""
import json

import numpy as np

from cnn.architectures import build_architecture
from cnn.io import save_model

# Logits of the tied model, whatever the image: three classes tie at the top,
# three below them, and four are 205 below the top, exactly 0 in float32.
TIED_LOGITS = np.array([0, 5, 0, 5, -200, -200, 5, -200, 0, -200], np.float32)
TIE_ORDER = [1, 3, 6, 0, 2, 8, 4, 5, 7, 9]


def tied_model():
    model = build_architecture("conv2k3p1-relu-maxpool2-flatten-dense10").build(seed=0)
    dense = model.layers[-1]
    dense.params["w"][...] = 0
    dense.params["b"][...] = TIED_LOGITS
    return model


def images(n=3):
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_the_tied_model_really_ties():
    proba = tied_model().predict_proba(images())
    assert proba.dtype == np.float32
    assert len(set(proba[0, [1, 3, 6]].tolist())) == 1
    assert len(set(proba[0, [0, 2, 8]].tolist())) == 1
    assert (proba[:, [4, 5, 7, 9]] == 0).all()


def test_model_predict_takes_the_lowest_tied_label():
    np.testing.assert_array_equal(tied_model().predict(images()), [1, 1, 1])


def test_top_k_keeps_the_lower_label_first():
    from cnn.predict import top_k
    proba = tied_model().predict_proba(images(1))[0]
    names = [f"c{i}" for i in range(10)]
    top = top_k(proba, 10, names)
    assert [t["label"] for t in top] == TIE_ORDER
    assert [t["class"] for t in top] == [f"c{i}" for i in TIE_ORDER]
    assert [t["label"] for t in top_k(proba, 4, names)] == TIE_ORDER[:4]


def test_predict_cli_lists_ties_in_label_order(tmp_path, capsys):
    from PIL import Image

    from cnn.predict import main
    save_model(tmp_path / "tied.npz", tied_model())
    Image.fromarray(images(1)[0]).save(tmp_path / "a.png")
    assert main([str(tmp_path / "tied.npz"), str(tmp_path / "a.png"), "--top", "10",
                 "--json"]) in (0, None)
    (result,) = json.loads(capsys.readouterr().out)
    assert [t["label"] for t in result["top"]] == TIE_ORDER
    assert result["label"] == 1
