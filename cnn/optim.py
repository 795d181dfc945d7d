"""Optimizers and learning-rate schedules.

An optimizer updates a model's parameters in place from the gradients its
layers hold after ``model.backward``. Its state (velocities, moments, step
count) round-trips through ``state_dict``/``load_state_dict`` for checkpoints.
"""
import math

import numpy as np

try:  # the compiled updates (pyx/optim.pyx); without them, NumPy's
    from cnn._optim import adam_update as _adam_update, sgd_update as _sgd_update
except ImportError:
    _adam_update = _sgd_update = None


class Optimizer:
    def __init__(self, model, lr, weight_decay=0.0):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.params = model.parameters()
        self.threads = getattr(model, "threads", None)   # for the compiled update
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self.slots = {}   # slot name -> {param key -> array}

    def _grad(self, key, param, grads, name):
        g = grads[name]
        # Weight decay on weights only: biases and batch-norm shifts stay free.
        if self.weight_decay and param.ndim > 1:
            g = g + param.dtype.type(self.weight_decay) * param
        return g

    def step(self):
        self.steps += 1
        for key, param, grads, name in self.params:
            self.update(key, param, self._grad(key, param, grads, name))

    def slot(self, name, key, like):
        table = self.slots.setdefault(name, {})
        if key not in table:
            table[key] = np.zeros_like(like)
        return table[key]

    def state_dict(self):
        arrays = {f"{slot}/{key}": value for slot, table in self.slots.items()
                  for key, value in table.items()}
        return {"steps": self.steps, "lr": self.lr}, arrays

    def load_state_dict(self, meta, arrays):
        self.steps = int(meta["steps"])
        self.lr = float(meta["lr"])
        self.slots = {}
        for full, value in arrays.items():
            slot, key = full.split("/", 1)
            self.slots.setdefault(slot, {})[key] = np.array(value)


class SGD(Optimizer):
    """SGD with (optionally Nesterov) momentum and L2 weight decay."""

    def __init__(self, model, lr=0.01, momentum=0.9, weight_decay=0.0, nesterov=False):
        super().__init__(model, lr, weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def update(self, key, param, grad):
        lr = param.dtype.type(self.lr)
        if self.momentum == 0:
            param -= lr * grad
            return
        v = self.slot("velocity", key, param)
        if _sgd_update is not None and grad.flags.c_contiguous and grad.dtype == param.dtype:
            # one pass over memory, the same numbers as below (pyx/optim.pyx)
            _sgd_update(param, grad, v, lr=self.lr, momentum=self.momentum,
                        nesterov=self.nesterov, threads=self.threads)
            return
        v *= param.dtype.type(self.momentum)
        v += grad
        step = grad + param.dtype.type(self.momentum) * v if self.nesterov else v
        param -= lr * step


class Adam(Optimizer):
    """Adam; with ``decoupled=True`` the weight decay is AdamW's (applied to the
    weights directly rather than added to the gradient)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled=False):
        super().__init__(model, lr, weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.decoupled = bool(decoupled)

    def _grad(self, key, param, grads, name):
        if self.decoupled:
            return grads[name]
        return super()._grad(key, param, grads, name)

    def update(self, key, param, grad):
        m = self.slot("m", key, param)
        v = self.slot("v", key, param)
        c1 = 1 - self.beta1 ** self.steps
        c2 = 1 - self.beta2 ** self.steps
        decay = (1 - self.lr * self.weight_decay
                 if self.decoupled and self.weight_decay and param.ndim > 1 else None)
        if _adam_update is not None and grad.flags.c_contiguous and grad.dtype == param.dtype:
            # one pass over memory, the same numbers as below (pyx/optim.pyx)
            _adam_update(param, grad, m, v, beta1=self.beta1, beta2=self.beta2,
                         step=self.lr / c1, c2=c2, eps=self.eps, decay=decay,
                         threads=self.threads)
            return
        self.update_numpy(param, grad, m, v, c1, c2, decay)

    def update_numpy(self, param, grad, m, v, c1, c2, decay):
        """The update in NumPy: the kernel's twin (and the path without it)."""
        t = param.dtype.type
        m *= t(self.beta1)
        m += t(1 - self.beta1) * grad
        v *= t(self.beta2)
        v += t(1 - self.beta2) * grad * grad
        if decay is not None:
            param *= t(decay)
        param -= t(self.lr / c1) * m / (np.sqrt(v / t(c2)) + t(self.eps))


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name, model, lr, weight_decay=0.0, momentum=0.9):
    name = name.lower()
    if name == "sgd":
        return SGD(model, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if name == "adam":
        return Adam(model, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return Adam(model, lr=lr, weight_decay=weight_decay, decoupled=True)
    raise ValueError(f"optimizer must be sgd, adam or adamw, got {name!r}")


class Schedule:
    """Learning rate as a function of progress in epochs (a float: 2.5 is halfway
    through the third epoch), with an optional linear warm-up."""

    def __init__(self, base_lr, kind="cosine", epochs=1, step_size=1, gamma=0.1,
                 warmup=0.0, min_lr=0.0):
        if kind not in ("constant", "step", "cosine"):
            raise ValueError(f"schedule must be constant, step or cosine, got {kind!r}")
        self.base_lr, self.kind, self.epochs = float(base_lr), kind, max(1, int(epochs))
        self.step_size, self.gamma = max(1, int(step_size)), float(gamma)
        self.warmup, self.min_lr = float(warmup), float(min_lr)

    def __call__(self, progress):
        if self.warmup and progress < self.warmup:
            return self.base_lr * min(1.0, (progress + 1e-3) / self.warmup)
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "step":
            return self.base_lr * self.gamma ** int(progress // self.step_size)
        frac = min(1.0, max(0.0, (progress - self.warmup) / max(1e-9, self.epochs - self.warmup)))
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
