"""Gunicorn settings of a checkout: runs service/gunicorn.conf.py, the settings
file the package ships (``cnn serve`` runs that one from an installed wheel).

    gunicorn -c gunicorn.conf.py 'service:create_app()'

The settings, their environment knobs (CNN_BIND, CNN_WORKERS, ...) and their
reasons are in service/gunicorn.conf.py. Like that file, this one must not
import numpy, cnn or service: the gunicorn master runs it before forking
workers, and OpenMP/OpenBLAS thread pools do not survive a fork.
"""
import importlib.util
import os
import runpy


def _packaged_settings():
    """Path of service/gunicorn.conf.py: next to this file in a checkout, else
    in the installed package (e.g. an image that copies only this shim).
    find_spec locates the package without importing it."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "service", "gunicorn.conf.py")
    if os.path.isfile(here):
        return here
    spec = importlib.util.find_spec("service")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gunicorn.conf.py: cannot find service/gunicorn.conf.py "
                         "(neither next to this file nor in an installed 'service' package)")
    return os.path.join(list(spec.submodule_search_locations)[0], "gunicorn.conf.py")


# Gunicorn reads the settings from this module's globals; the dunder names
# (__file__, __doc__, ...) stay this file's own.
globals().update({name: value for name, value in runpy.run_path(_packaged_settings()).items()
                  if not name.startswith("__")})
