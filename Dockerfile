# syntax=docker/dockerfile:1
#
# cnn: Fashion-MNIST CNN with Cython kernels, and its Flask/gunicorn service.
#
#   docker build -t cnn .                      # the API image (last stage, "api")
#   docker build --target train -t cnn-train . # the training image
#   docker compose up                          # train into the "models" volume, then serve
#
# Stages:
#   build    compilers + Cython: pip-installs the project into /opt/venv,
#            compiling the kernels in pyx/ (OpenMP on).
#   base     python slim + libgomp1 (the only native library the compiled
#            kernels need beyond what the NumPy/SciPy/Pillow wheels bundle),
#            the venv from "build", a non-root user and /models.
#   train    base + Debian's dataset-fashion-mnist (the data set, ~30 MB,
#            in /usr/share/datasets/fashion-mnist where cnn.data looks by
#            default). Only this image carries the data: serving never reads it.
#   api      base + gunicorn.conf.py; runs the service (default target).
#
# Both runtime images are the same Debian release as the build stage (the
# venv's python symlinks to /usr/local/bin/python3.11 of that image), pinned to
# bookworm, whose archive has dataset-fashion-mnist.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------ build
FROM ${PYTHON_IMAGE} AS build

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from (see .dockerignore: no in-place *.so or
# generated pyx/*.c from the host get in).
COPY pyproject.toml setup.py README.md ./
COPY pyx/ pyx/
COPY cnn/ cnn/
COPY service/ service/
# A regular (non-editable) install: setuptools builds the extensions in an
# isolated build env (Cython, NumPy headers, SciPy's cython_blas) and puts the
# compiled modules into /opt/venv's site-packages. The import check fails the
# build if a kernel did not compile or the service does not import.
RUN pip install --upgrade pip \
 && pip install . \
 && cd / && python -c "import cnn._conv, cnn._dense, service; print('cnn', cnn.__version__, 'built')"

# ------------------------------------------------------------------- base
FROM ${PYTHON_IMAGE} AS base

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv

# PYTHONUNBUFFERED: logs reach `docker logs` at once. MPLBACKEND: training
# draws its learning curves without a display. CNN_BIND: gunicorn.conf.py
# binds loopback unless told otherwise; in a container the port is only
# reachable once published, so listen on all of the container's interfaces.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    CNN_MODEL_DIR=/models \
    CNN_BIND=0.0.0.0:8000

# Non-root user; /models belongs to it so that a named volume mounted there
# starts out writable by it (Docker copies the mount point's ownership into an
# empty named volume).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/cnn cnn \
 && mkdir -p /models /app \
 && chown cnn:cnn /models
WORKDIR /app

# ------------------------------------------------------------------ train
FROM base AS train

RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*

USER cnn
# The default recipe (convnet, 5 epochs, Adam, cosine): writes
# /models/convnet.npz plus its .ckpt, .history.json, .history.csv and .png beside it.
CMD ["python", "-m", "cnn.train", "--out", "/models/convnet.npz", "--progress", "lines"]

# -------------------------------------------------------------------- api
FROM base AS api

COPY gunicorn.conf.py /app/gunicorn.conf.py
USER cnn
EXPOSE 8000

# Liveness: the process answers HTTP. No curl in slim images, so python's
# urllib; the port follows CNN_BIND like gunicorn.conf.py does. (compose
# overrides this with /ready, which also requires a loaded model.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('CNN_BIND', '0.0.0.0:8000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)"]

# Exec form: gunicorn is the process that receives `docker stop`'s SIGTERM and
# shuts its workers down gracefully (graceful_timeout in gunicorn.conf.py).
CMD ["gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"]
