"""/predict's top_k and V2's labels on tied probabilities: equal probabilities keep
the lower label first, as argmax does (service.api.predictions_list)."""
import numpy as np

from cnn.io import save_model
from tests.service.test_v2 import infer_body
from tests.test_top_k import TIE_ORDER, images, tied_model


def test_predictions_list_keeps_the_lower_label_first():
    from service.api import predictions_list
    proba = np.array([[0.0, 0.25, 0.0, 0.25, 0.5, 0.0],
                      [0.5, 0.0, 0.0, 0.0, 0.0, 0.5]], np.float32)
    rows = predictions_list(proba, 6, [f"c{i}" for i in range(6)])
    assert [t["label"] for t in rows[0]["top_k"]] == [4, 1, 3, 0, 2, 5]
    assert [t["label"] for t in rows[1]["top_k"]] == [0, 5, 1, 2, 3, 4]
    assert [r["label"] for r in rows] == [4, 0]


def test_predict_and_v2_rank_ties_by_label(make_app, models_dir):
    save_model(models_dir / "tied.npz", tied_model())
    client = make_app(models_dir).test_client()
    r = client.post("/predict?model=tied&top_k=10",
                    json={"pixels": images(2).tolist()})
    assert r.status_code == 200, r.get_data(as_text=True)
    for p in r.get_json()["predictions"]:
        assert [t["label"] for t in p["top_k"]] == TIE_ORDER
        assert p["label"] == 1
    r = client.post("/v2/models/tied/infer", json=infer_body(images(2)))
    assert r.status_code == 200, r.get_data(as_text=True)
    labels = next(o for o in r.get_json()["outputs"] if o["name"] == "labels")
    assert labels["data"] == [1, 1]
