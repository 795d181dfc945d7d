"""Optimizers (SGD, Adam, AdamW), their checkpoint state, and learning-rate schedules."""
import json
import math

import numpy as np
import pytest

from cnn.optim import SGD, Adam, Schedule, make_optimizer


class Params:
    """The part of a model an optimizer uses: ``parameters()`` -> [(key, param,
    grads, name)], with the gradients in ``grads[name]``."""

    def __init__(self, **arrays):
        self.arrays = {k: np.array(v, dtype=np.float64) for k, v in arrays.items()}
        self.grads = {k: np.zeros_like(v) for k, v in self.arrays.items()}

    def parameters(self):
        return [(f"0.{k}", v, self.grads, k) for k, v in self.arrays.items()]


# A quadratic bowl f(p) = 1/2 sum a (p - c)^2 over a matrix "w" and a vector "b".
A = {"w": np.array([[1.0, 4.0], [0.5, 2.0]]), "b": np.array([3.0, 0.2, 1.0])}
C = {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([-1.0, 2.0, 0.0])}


def quadratic(model):
    return sum(0.5 * float(np.sum(A[k] * (model.arrays[k] - C[k]) ** 2)) for k in A)


def set_quadratic_grads(model):
    for k in A:
        model.grads[k][...] = A[k] * (model.arrays[k] - C[k])


def start():
    return Params(w=np.zeros((2, 2)), b=np.zeros(3))


@pytest.mark.parametrize("make, steps", [
    (lambda m: SGD(m, lr=0.1, momentum=0.9), 200),
    (lambda m: SGD(m, lr=0.1, momentum=0.9, nesterov=True), 200),
    (lambda m: SGD(m, lr=0.2, momentum=0.0), 200),
    (lambda m: Adam(m, lr=0.05), 400),
    (lambda m: Adam(m, lr=0.05, weight_decay=1e-4, decoupled=True), 400),
], ids=["sgd-momentum", "sgd-nesterov", "sgd-plain", "adam", "adamw"])
def test_optimizers_minimise_a_quadratic(make, steps):
    model = start()
    opt = make(model)
    f0 = quadratic(model)
    values = []
    for _ in range(steps):
        set_quadratic_grads(model)
        opt.step()
        values.append(quadratic(model))
    assert values[-1] < 1e-3 * f0, values[-1]
    assert values[9] < f0
    assert opt.steps == steps
    for k in A:
        np.testing.assert_allclose(model.arrays[k], C[k], atol=0.05)


def test_sgd_momentum_matches_hand_computation():
    lr, mu = 0.1, 0.9
    for nesterov in (False, True):
        model = Params(w=[[1.0, -2.0]], b=[0.5])
        opt = SGD(model, lr=lr, momentum=mu, nesterov=nesterov)
        p = {k: v.copy() for k, v in model.arrays.items()}
        g1 = {"w": np.array([[0.3, -0.6]]), "b": np.array([1.0])}
        g2 = {"w": np.array([[-0.2, 0.4]]), "b": np.array([0.5])}
        for k in p:
            v1 = g1[k]
            v2 = mu * v1 + g2[k]
            if nesterov:
                p[k] = p[k] - lr * (g1[k] + mu * v1)
                p[k] = p[k] - lr * (g2[k] + mu * v2)
            else:
                p[k] = p[k] - lr * v1
                p[k] = p[k] - lr * v2
        for g in (g1, g2):
            for k in g:
                model.grads[k][...] = g[k]
            opt.step()
        for k in p:
            np.testing.assert_allclose(model.arrays[k], p[k], rtol=1e-14, err_msg=k)
    # e.g. w[0, 0] without Nesterov: 1 - 0.1*0.3 - 0.1*(0.9*0.3 - 0.2) = 0.963
    model = Params(w=[[1.0]], b=[0.0])
    opt = SGD(model, lr=lr, momentum=mu)
    for g in (0.3, -0.2):
        model.grads["w"][...] = g
        opt.step()
    assert model.arrays["w"][0, 0] == pytest.approx(0.963, abs=1e-12)


def test_adam_first_steps_match_hand_computation():
    model = Params(w=[[1.0, 1.0]], b=[0.0])
    opt = Adam(model, lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    model.grads["w"][...] = [[0.5, -4.0]]
    model.grads["b"][...] = [1e-3]
    opt.step()
    # the first step moves every parameter by lr * sign(g) (bias correction)
    np.testing.assert_allclose(model.arrays["w"], [[0.99, 1.01]], rtol=1e-6)
    np.testing.assert_allclose(model.arrays["b"], [-0.01], rtol=1e-4)
    after_one = model.arrays["w"][0].copy()
    model.grads["w"][...] = [[0.5, 4.0]]
    opt.step()
    m = 0.9 * 0.1 * np.array([0.5, -4.0]) + 0.1 * np.array([0.5, 4.0])
    v = 0.999 * 0.001 * np.array([0.25, 16]) + 0.001 * np.array([0.25, 16])
    step = 0.01 * (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    np.testing.assert_allclose(model.arrays["w"][0], after_one - step, rtol=1e-12)


@pytest.mark.parametrize("make", [
    lambda m: SGD(m, lr=0.1, momentum=0.0, weight_decay=0.5),
    lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=0.5),
    lambda m: Adam(m, lr=0.1, weight_decay=0.5),
    lambda m: Adam(m, lr=0.1, weight_decay=0.5, decoupled=True),
], ids=["sgd", "sgd-momentum", "adam-l2", "adamw"])
def test_weight_decay_applies_to_weights_not_biases(make):
    # zero gradients: only the decay can move anything
    model = Params(w=np.full((3, 4), 2.0), conv=np.full((2, 1, 3, 3), -1.0),
                   b=np.full(3, 2.0), gamma=np.ones(4), beta=np.full(4, 0.5))
    opt = make(model)
    before = {k: v.copy() for k, v in model.arrays.items()}
    opt.step()
    for k in ("b", "gamma", "beta"):
        np.testing.assert_array_equal(model.arrays[k], before[k], err_msg=k)
    for k in ("w", "conv"):
        after, was = model.arrays[k], before[k]
        assert np.all(np.abs(after) < np.abs(was)), k      # shrunk towards zero
        assert np.all(np.sign(after) == np.sign(was)), k
    if isinstance(opt, SGD) or opt.decoupled:
        # SGD: w - lr*wd*w; AdamW: w * (1 - lr*wd); both 0.95 w on the first step
        np.testing.assert_allclose(model.arrays["w"], 0.95 * before["w"], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_moves_one_dimensional_parameters_exactly_as_adam(dtype):
    """AdamW's decay touches weights only: with the same gradients, biases and
    batch-norm scales/shifts follow plain Adam bit for bit, step after step,
    while every weight ends up smaller than Adam's."""
    rng = np.random.default_rng(0)
    init = {"conv": rng.standard_normal((2, 1, 3, 3)), "w": rng.standard_normal((3, 4)),
            "b": rng.standard_normal(3), "gamma": 1 + rng.random(4),
            "beta": rng.standard_normal(4)}
    models = [Params(**init), Params(**init)]
    for m in models:
        for k in m.arrays:
            m.arrays[k] = m.arrays[k].astype(dtype)
            m.grads[k] = m.grads[k].astype(dtype)
    adam = Adam(models[0], lr=0.05)
    adamw = Adam(models[1], lr=0.05, weight_decay=0.3, decoupled=True)
    for _ in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in init.items()}
        for m, opt in zip(models, (adam, adamw)):
            for k, g in grads.items():
                m.grads[k][...] = g
            opt.step()
    for k in ("b", "gamma", "beta"):
        np.testing.assert_array_equal(models[1].arrays[k], models[0].arrays[k], err_msg=k)
    for k in ("conv", "w"):
        assert not np.allclose(models[1].arrays[k], models[0].arrays[k]), k


def test_weight_decay_adds_to_the_gradient():
    model = Params(w=[[2.0]], b=[2.0])
    opt = SGD(model, lr=0.1, momentum=0.0, weight_decay=0.5)
    model.grads["w"][...] = 1.0
    model.grads["b"][...] = 1.0
    opt.step()
    assert model.arrays["w"][0, 0] == pytest.approx(2.0 - 0.1 * (1.0 + 0.5 * 2.0))
    assert model.arrays["b"][0] == pytest.approx(2.0 - 0.1 * 1.0)


def snapshot(opt):
    """The optimizer state as a checkpoint keeps it: JSON metadata and copied arrays."""
    meta, arrays = opt.state_dict()
    return json.loads(json.dumps(meta)), {k: np.array(v) for k, v in arrays.items()}


@pytest.mark.parametrize("make", [
    lambda m: SGD(m, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda m: SGD(m, lr=0.05, momentum=0.0),
    lambda m: Adam(m, lr=0.02),
    lambda m: Adam(m, lr=0.02, weight_decay=0.01, decoupled=True),
], ids=["sgd-nesterov", "sgd-plain", "adam", "adamw"])
def test_state_dict_round_trip_continues_identically(make):
    a = start()
    opt_a = make(a)
    for _ in range(5):
        set_quadratic_grads(a)
        opt_a.step()
    meta, arrays = snapshot(opt_a)
    assert meta["steps"] == 5
    b = start()
    for k in a.arrays:
        b.arrays[k][...] = a.arrays[k]
    opt_b = make(b)
    opt_b.load_state_dict(meta, arrays)
    fresh = start()                     # the same weights but a fresh optimizer
    for k in a.arrays:
        fresh.arrays[k][...] = a.arrays[k]
    opt_fresh = make(fresh)
    for _ in range(7):
        for model, opt in ((a, opt_a), (b, opt_b), (fresh, opt_fresh)):
            set_quadratic_grads(model)
            opt.step()
    assert opt_b.steps == opt_a.steps == 12
    for k in a.arrays:
        np.testing.assert_array_equal(b.arrays[k], a.arrays[k], err_msg=k)
    if arrays:   # with momentum/moments, forgetting the state changes the path
        assert any(not np.array_equal(fresh.arrays[k], a.arrays[k]) for k in a.arrays)


def test_state_dict_names_slots_per_parameter():
    model = start()
    opt = Adam(model, lr=0.1)
    set_quadratic_grads(model)
    opt.step()
    meta, arrays = opt.state_dict()
    assert meta == {"steps": 1, "lr": 0.1}
    assert sorted(arrays) == ["m/0.b", "m/0.w", "v/0.b", "v/0.w"]
    assert arrays["m/0.w"].shape == (2, 2)


def test_float32_parameters_stay_float32():
    model = Params(w=np.ones((2, 2)), b=np.ones(2))
    for k in list(model.arrays):
        model.arrays[k] = model.arrays[k].astype(np.float32)
        model.grads[k] = np.full_like(model.arrays[k], 0.5)
    for opt in (SGD(model, lr=0.1, weight_decay=0.1), Adam(model, lr=0.1)):
        ids = {k: id(v) for k, v in model.arrays.items()}
        opt.step()
        for k, v in model.arrays.items():
            assert v.dtype == np.float32 and id(v) == ids[k]


def test_bad_hyper_parameters():
    model = start()
    for kwargs, word in [({"lr": 0}, "lr"), ({"lr": -1}, "lr"), ({"lr": float("nan")}, "lr"),
                         ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"),
                         ({"weight_decay": -1e-4}, "weight_decay")]:
        with pytest.raises(ValueError, match=word):
            SGD(model, **{"lr": 0.1, **kwargs})
    with pytest.raises(ValueError, match="lr"):
        Adam(model, lr=0)
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer("rmsprop", model, 0.1)


def test_make_optimizer():
    model = start()
    sgd = make_optimizer("SGD", model, 0.05, weight_decay=1e-4, momentum=0.8)
    assert isinstance(sgd, SGD) and sgd.nesterov and sgd.momentum == 0.8
    assert sgd.weight_decay == 1e-4 and sgd.lr == 0.05
    adam = make_optimizer("adam", model, 1e-3)
    assert isinstance(adam, Adam) and not adam.decoupled
    adamw = make_optimizer("adamw", model, 1e-3, weight_decay=0.01)
    assert isinstance(adamw, Adam) and adamw.decoupled and adamw.weight_decay == 0.01


# --------------------------------------------------------------------------- schedules


def test_cosine_schedule():
    s = Schedule(0.1, "cosine", epochs=10, min_lr=1e-4)
    assert s(0) == pytest.approx(0.1)
    assert s(5) == pytest.approx(1e-4 + (0.1 - 1e-4) * 0.5)
    assert s(10) == pytest.approx(1e-4)
    assert s(9.99) == pytest.approx(1e-4, abs=1e-5)
    assert s(12) == pytest.approx(1e-4)            # stays at min_lr after the end
    values = [s(p) for p in np.linspace(0, 10, 101)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert Schedule(0.1, "cosine", epochs=4)(4) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule():
    s = Schedule(0.1, "step", epochs=9, step_size=3, gamma=0.5)
    for progress, expected in [(0, 0.1), (2.99, 0.1), (3, 0.05), (5.5, 0.05), (6, 0.025),
                               (8.9, 0.025), (9, 0.0125)]:
        assert s(progress) == pytest.approx(expected), progress


def test_constant_schedule():
    s = Schedule(0.01, "constant", epochs=5)
    assert {s(p) for p in (0, 1.5, 4.99, 10)} == {0.01}


@pytest.mark.parametrize("kind", ["cosine", "constant", "step"])
def test_warmup_ramps_linearly_to_the_base_lr(kind):
    s = Schedule(0.1, kind, epochs=10, warmup=2.0, step_size=5)
    ramp = [s(p) for p in np.linspace(0, 2, 41)[:-1]]
    assert 0 < ramp[0] < 0.001
    assert all(b > a for a, b in zip(ramp, ramp[1:]))
    assert s(1.0) == pytest.approx(0.05, rel=1e-2)
    assert max(ramp) <= 0.1
    assert s(2.0 - 1e-6) <= 0.1
    assert s(2.0) == pytest.approx(0.1)          # continuous at the end of the warm-up
    if kind == "cosine":
        assert s(10) == pytest.approx(0.0, abs=1e-12)
        assert s(6) == pytest.approx(0.05)          # halfway through the decay


def test_schedule_rejects_unknown_kind():
    with pytest.raises(ValueError, match="linear"):
        Schedule(0.1, "linear")


def test_cosine_matches_formula():
    s = Schedule(1.0, "cosine", epochs=3)
    for p in (0.3, 1.1, 2.7):
        assert s(p) == pytest.approx(0.5 * (1 + math.cos(math.pi * p / 3)))


# -- the compiled Adam update (pyx/optim.pyx) against its NumPy twin ----------------
def random_params(dtype, seed):
    rng = np.random.default_rng(seed)
    model = Params(w=rng.standard_normal((37, 129)), b=rng.standard_normal(37),
                   big=rng.standard_normal(70_001), empty=np.zeros((0, 3)))
    for k, v in model.arrays.items():
        model.arrays[k] = v.astype(dtype)
        model.grads[k] = np.zeros_like(model.arrays[k])
    return model, rng


COMPILED_UPDATES = {
    "adam": lambda m: Adam(m, lr=3e-3),
    "adam-l2": lambda m: Adam(m, lr=3e-3, weight_decay=0.01),
    "adamw": lambda m: Adam(m, lr=3e-3, weight_decay=0.05, decoupled=True),
    "sgd-nesterov": lambda m: SGD(m, lr=0.01, momentum=0.9, nesterov=True),
    "sgd-momentum-l2": lambda m: SGD(m, lr=0.01, momentum=0.8, weight_decay=1e-3),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", sorted(COMPILED_UPDATES))
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_compiled_updates_equal_the_numpy_updates_bit_for_bit(dtype, kind, threads,
                                                              monkeypatch):
    import cnn.optim as optim
    assert optim._adam_update is not None and optim._sgd_update is not None   # built
    runs = {}
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(optim, "_adam_update", None)
            monkeypatch.setattr(optim, "_sgd_update", None)
        model, rng = random_params(dtype, seed=5)
        opt = COMPILED_UPDATES[kind](model)
        opt.threads = threads
        for _ in range(7):
            for g in model.grads.values():
                g[...] = rng.standard_normal(g.shape) * rng.choice([1e-6, 1.0, 1e3])
            opt.step()
        runs[compiled] = (model.arrays, opt.slots)
        monkeypatch.undo()
    (p1, s1), (p0, s0) = runs[True], runs[False]
    assert s1.keys() == s0.keys() and s1
    for k in p1:
        np.testing.assert_array_equal(p1[k], p0[k], err_msg=k)
        assert p1[k].dtype == np.dtype(dtype)
        for slot in s1:
            np.testing.assert_array_equal(s1[slot][f"0.{k}"], s0[slot][f"0.{k}"])


@pytest.mark.parametrize("make", [lambda m: Adam(m, lr=1e-2),
                                  lambda m: SGD(m, lr=1e-2, momentum=0.9)])
def test_a_strided_gradient_takes_the_numpy_update(make):
    model, rng = random_params(np.float32, seed=1)
    twin, _ = random_params(np.float32, seed=1)
    a, b = make(model), make(twin)
    g = rng.standard_normal((37, 258)).astype(np.float32)[:, ::2]     # not contiguous
    model.grads["w"], twin.grads["w"] = g, np.ascontiguousarray(g)
    a.step()
    b.step()
    np.testing.assert_array_equal(model.arrays["w"], twin.arrays["w"])


def test_compiled_updates_refuse_mismatched_arrays():
    from cnn._optim import adam_update, sgd_update
    p = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="velocity must have param's dtype and shape"):
        sgd_update(p, p.copy(), np.zeros(3, np.float32), lr=0.1, momentum=0.9)
    ok = dict(beta1=0.9, beta2=0.999, step=1e-3, c2=1e-3, eps=1e-8)
    with pytest.raises(ValueError, match="grad must have param's dtype and shape"):
        adam_update(p, np.zeros(5, np.float32), np.zeros(4, np.float32),
                    np.zeros(4, np.float32), **ok)
    with pytest.raises(ValueError, match="m must have param's dtype and shape"):
        adam_update(p, np.zeros(4, np.float32), np.zeros(4, np.float64),
                    np.zeros(4, np.float32), **ok)
    with pytest.raises(ValueError, match="v must be C-contiguous"):
        adam_update(p, np.zeros(4, np.float32), np.zeros(4, np.float32),
                    np.zeros(8, np.float32)[::2], **ok)
    with pytest.raises(TypeError, match="param must be float32 or float64"):
        adam_update(np.zeros(4, np.int32), p, p, p, **ok)
    with pytest.raises(TypeError, match="grad must be a numpy array"):
        adam_update(p, [0.0] * 4, p, p, **ok)
    frozen = np.zeros(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="v must be writeable"):
        adam_update(p, p.copy(), p.copy(), frozen, **ok)
