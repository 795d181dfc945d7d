"""``cnn serve``: the prediction service under gunicorn, with the packaged settings.

    cnn serve [--bind HOST:PORT] [--workers N] [--models DIR]

runs ``python -m gunicorn -c <service>/gunicorn.conf.py 'service:create_app()'``,
the settings file the package ships, so an installed wheel serves without a
checkout. The flags set CNN_BIND, CNN_WORKERS and CNN_MODEL_DIR; a flag not
given leaves the environment (and so the settings file's default) as it is.
Every other knob is an environment variable (see service/gunicorn.conf.py and
service/config.py), or a gunicorn flag in GUNICORN_CMD_ARGS.

The process becomes gunicorn (exec), so SIGTERM, SIGHUP and Ctrl-C reach the
gunicorn master directly, as with the Dockerfile's command.
"""
import argparse
import importlib.util
import os
import sys

from cnn import __version__

APP = "service:create_app()"


def settings_path():
    """service/gunicorn.conf.py of the installed service package. find_spec
    locates it without importing it: the service pulls in NumPy and Flask,
    which the gunicorn master must not have loaded before it forks."""
    spec = importlib.util.find_spec("service")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("cnn serve: the 'service' package is not installed "
                         "(pip install the cnn distribution)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "gunicorn.conf.py")
    if not os.path.isfile(path):
        raise SystemExit(f"cnn serve: {path} is missing from the installed package")
    return path


def _bind(value):
    """HOST:PORT (gunicorn's unix:PATH and fd://N are passed through)."""
    if value.startswith(("unix:", "fd://")):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port from 1 to 65535, "
                                         f"got {value!r}")
    return value


def _workers(value):
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _models(value):
    if not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"no such folder: {value!r}")
    return os.path.abspath(value)


def build_parser():
    p = argparse.ArgumentParser(
        prog="cnn serve",
        description="Serve every *.npz weights file of a folder over HTTP (gunicorn, with the "
                    "settings the package ships: service/gunicorn.conf.py).",
        epilog="Other settings are environment variables (CNN_THREADS, CNN_API_TOKEN, ...; see "
               "the README) or gunicorn flags in GUNICORN_CMD_ARGS.")
    p.add_argument("--bind", type=_bind, metavar="HOST:PORT",
                   help="address to listen on (CNN_BIND; default 127.0.0.1:8000)")
    p.add_argument("--workers", type=_workers, metavar="N",
                   help="worker processes (CNN_WORKERS; default min(cores, 4))")
    p.add_argument("--models", type=_models, metavar="DIR",
                   help="folder of weights files to serve (CNN_MODEL_DIR; default ./models)")
    p.add_argument("--version", action="version", version=f"cnn {__version__}")
    return p


def gunicorn_command(argv=None):
    """(argv, environment) of the gunicorn process ``cnn serve argv`` runs."""
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    for name, value in (("CNN_BIND", args.bind), ("CNN_WORKERS", args.workers),
                        ("CNN_MODEL_DIR", args.models)):
        if value is not None:
            env[name] = str(value)
    command = [sys.executable, "-m", "gunicorn", "-c", settings_path(), APP]
    return command, env


def main(argv=None):
    command, env = gunicorn_command(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
