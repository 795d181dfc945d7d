"""Configuration: defaults, then the environment, then ``test_config``.

Every setting has one name, used both as the environment variable and as the
key in ``app.config`` (and in ``test_config``):

=========================  ==========================================================
``CNN_MODEL_DIR``          folder of ``*.npz`` weights files to serve (``models``,
                           relative to the working directory)
``CNN_DEFAULT_MODEL``      model used when a request names none (a file stem,
                           ``.npz`` optional); default: the alphabetically first
                           loaded model
``CNN_MAX_CONTENT_LENGTH`` largest request body in bytes (16 MiB); larger -> 413
``CNN_MAX_IMAGES``         most images in one request (256); more -> 413
``CNN_MAX_MODEL_BYTES``    most bytes one weights file's arrays may take
                           (``cnn.io.MAX_BYTES``, 256 MiB); a larger file is refused
                           before it is read, the others are still served
``CNN_WORKER_BODY_BYTES``  bytes of request bodies one worker process holds at once,
                           counted as they arrive (128 MiB, at least
                           ``CNN_MAX_CONTENT_LENGTH``); more -> 503 with Retry-After
``CNN_BODY_TIMEOUT``       seconds a client has to send the whole request body (20);
                           slower -> 408 (service.body)
``CNN_API_TOKEN``          when set, requests need ``Authorization: Bearer <token>``
                           (health endpoints excepted; service.auth); default: none
``CNN_MAX_PIXELS``         largest width x height of an uploaded image, checked
                           from its header before decoding (``cnn.images.MAX_PIXELS``,
                           4096 x 3072: it bounds the memory one image can cost)
``CNN_MAX_REQUEST_PIXELS`` largest width x height summed over the image files of one
                           request, checked from their headers before decoding
                           (``cnn.images.MAX_TOTAL_PIXELS``, 32 M: it bounds the CPU
                           time of a request); more -> 413
``CNN_WORKERS``            worker processes sharing the machine (1); only used for
                           the default of ``CNN_THREADS``
``CNN_THREADS``            kernel threads per worker process; default: usable
                           cores // ``CNN_WORKERS``, at least 1
``CNN_BACKEND``            kernel backend: ``cython``, ``python`` or ``naive``
                           (default: ``cython`` when built)
``CNN_BATCHING``           merge concurrent predictions of a model into one forward
                           pass (service.batching): ``1`` (default) or ``0``
``CNN_BATCH_MAX_SIZE``     most images in a merged forward pass (default 64, or
                           ``CNN_MAX_IMAGES`` when smaller; at most ``CNN_MAX_IMAGES``);
                           a larger request runs alone
``CNN_BATCH_DELAY_US``     microseconds the oldest queued request may wait for more
                           to join its pass (0; at most 1,000,000); a request that
                           finds the worker idle never waits
``CNN_RELOAD_INTERVAL``    seconds between two looks of a worker at the models folder
                           (2; decimals allowed): added, replaced and removed weights
                           files are served without a restart; 0 turns it off (the
                           folder is read once, at start; service.models)
``CNN_STATE_DIR``          folder of the model repository's state file (which models
                           were unloaded through ``/v2/repository``), shared by every
                           worker; default: the models folder (service.repository)
=========================  ==========================================================

Environment values are strings and are checked here: a bad value (``CNN_MAX_IMAGES=lots``)
stops ``create_app`` with a ValueError naming the variable, rather than serving
with a surprise.
"""
import os

from cnn._threads import available_cores
from cnn.backends import BACKENDS, BackendUnavailable, get_backend
from cnn.images import MAX_PIXELS, MAX_TOTAL_PIXELS
from cnn.io import MAX_BYTES

MiB = 1024 * 1024

DEFAULTS = {
    "CNN_MODEL_DIR": "models",
    "CNN_DEFAULT_MODEL": None,
    "CNN_MAX_CONTENT_LENGTH": 16 * MiB,
    "CNN_MAX_IMAGES": 256,
    "CNN_BODY_TIMEOUT": 20,
    "CNN_WORKER_BODY_BYTES": 128 * MiB,
    "CNN_MAX_MODEL_BYTES": MAX_BYTES,
    "CNN_API_TOKEN": None,
    "CNN_MAX_PIXELS": MAX_PIXELS,
    "CNN_MAX_REQUEST_PIXELS": MAX_TOTAL_PIXELS,
    "CNN_WORKERS": 1,
    "CNN_THREADS": None,
    "CNN_BACKEND": None,
    "CNN_BATCHING": True,
    "CNN_BATCH_MAX_SIZE": None,
    "CNN_BATCH_DELAY_US": 0,
    "CNN_RELOAD_INTERVAL": 2.0,
    "CNN_STATE_DIR": None,
}

_INT_KEYS = ("CNN_MAX_CONTENT_LENGTH", "CNN_MAX_IMAGES", "CNN_BODY_TIMEOUT", "CNN_MAX_PIXELS",
             "CNN_MAX_MODEL_BYTES", "CNN_MAX_REQUEST_PIXELS", "CNN_WORKER_BODY_BYTES",
             "CNN_WORKERS", "CNN_THREADS")
_STR_KEYS = ("CNN_MODEL_DIR", "CNN_DEFAULT_MODEL", "CNN_BACKEND", "CNN_API_TOKEN",
             "CNN_STATE_DIR")


def _positive_int(value, key):
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        if not text.isdigit():
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        value = int(text)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def _seconds(value, key, most=3600):
    """A non-negative number of seconds (0 allowed: "off"), at most ``most``."""
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number of seconds, got {value!r}") from None
    if not 0 <= seconds <= most:   # also refuses NaN
        raise ValueError(f"{key} must be from 0 (off) to {most} seconds, got {value!r}")
    return seconds


_SWITCH = {"1": True, "true": True, "yes": True, "on": True,
           "0": False, "false": False, "no": False, "off": False}
MAX_BATCH_DELAY_US = 1_000_000


def _switch(value, key):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _SWITCH:
        return _SWITCH[value.strip().lower()]
    raise ValueError(f"{key} must be 1 or 0 (true/false, yes/no, on/off), got {value!r}")


def _batch_settings(config):
    """Check and complete the dynamic batching settings (service.batching)."""
    config["CNN_BATCHING"] = _switch(config["CNN_BATCHING"], "CNN_BATCHING")
    max_images = config["CNN_MAX_IMAGES"]
    if config["CNN_BATCH_MAX_SIZE"] is None:
        config["CNN_BATCH_MAX_SIZE"] = min(64, max_images)
    size = config["CNN_BATCH_MAX_SIZE"] = _positive_int(config["CNN_BATCH_MAX_SIZE"],
                                                        "CNN_BATCH_MAX_SIZE")
    if size > max_images:
        raise ValueError(f"CNN_BATCH_MAX_SIZE ({size:,}) must be at most CNN_MAX_IMAGES "
                         f"({max_images:,}): a merged pass holds no more images than one "
                         f"request may")
    delay = value = config["CNN_BATCH_DELAY_US"]
    if isinstance(value, str) and value.strip().replace("_", "").isdigit():
        value = int(value.strip().replace("_", ""))
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 <= value <= MAX_BATCH_DELAY_US:
        raise ValueError(f"CNN_BATCH_DELAY_US must be an integer from 0 to "
                         f"{MAX_BATCH_DELAY_US:,} (microseconds), got {delay!r}")
    config["CNN_BATCH_DELAY_US"] = value


def default_threads(workers, cores=None):
    """Kernel threads per worker so that workers x threads <= cores (at least 1)."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // workers)


def load_config(test_config=None, environ=None):
    """The checked settings: DEFAULTS, overridden by ``environ`` (default
    ``os.environ``), overridden by ``test_config``. Keys of ``test_config`` that
    are not CNN_* settings (TESTING, ...) are returned unchanged for Flask."""
    environ = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    for key in DEFAULTS:
        value = environ.get(key)
        if value is not None and value.strip() != "":
            config[key] = value.strip()
    extra = {}
    for key, value in (test_config or {}).items():
        if key in DEFAULTS:
            config[key] = value
        else:
            extra[key] = value

    for key in _INT_KEYS:
        if config[key] is not None:
            config[key] = _positive_int(config[key], key)
    for key in _STR_KEYS:
        value = config[key]
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"{key} must be a string, got {value!r}")
    config["CNN_MODEL_DIR"] = os.fspath(config["CNN_MODEL_DIR"])
    config["CNN_RELOAD_INTERVAL"] = _seconds(config["CNN_RELOAD_INTERVAL"], "CNN_RELOAD_INTERVAL")
    if config["CNN_STATE_DIR"] is not None:
        config["CNN_STATE_DIR"] = os.fspath(config["CNN_STATE_DIR"])
    if config["CNN_DEFAULT_MODEL"] is not None:
        name = os.fspath(config["CNN_DEFAULT_MODEL"])
        config["CNN_DEFAULT_MODEL"] = name[:-4] if name.lower().endswith(".npz") else name
    if config["CNN_BACKEND"] is not None:
        backend = config["CNN_BACKEND"].lower()
        if backend not in BACKENDS:
            raise ValueError(f"CNN_BACKEND must be one of {', '.join(BACKENDS)}, got "
                             f"{config['CNN_BACKEND']!r}")
        try:
            get_backend(backend)
        except BackendUnavailable as exc:
            raise ValueError(f"CNN_BACKEND={backend}: {exc}") from None
        config["CNN_BACKEND"] = backend
    if config["CNN_WORKER_BODY_BYTES"] < config["CNN_MAX_CONTENT_LENGTH"]:
        raise ValueError(f"CNN_WORKER_BODY_BYTES ({config['CNN_WORKER_BODY_BYTES']:,}) must be "
                         f"at least CNN_MAX_CONTENT_LENGTH ({config['CNN_MAX_CONTENT_LENGTH']:,})")
    token = config["CNN_API_TOKEN"]
    if token is not None and (not token.isascii() or not token.isprintable()
                              or token != token.strip()):
        raise ValueError("CNN_API_TOKEN must be printable ASCII without surrounding spaces "
                         "(HTTP headers carry it as Latin-1)")
    if config["CNN_THREADS"] is None:
        config["CNN_THREADS"] = default_threads(config["CNN_WORKERS"])
    _batch_settings(config)
    return config, extra
