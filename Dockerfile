# syntax=docker/dockerfile:1
#
# cnn: Fashion-MNIST CNN with Cython kernels, and its Flask/gunicorn service.
#
#   docker build -t cnn .                      # the API image (last stage, "api")
#   docker build --target train -t cnn-train . # the training image
#   docker compose up                          # train into the "models" volume, then serve
#
# Stages:
#   build    compilers + Cython: builds the project's wheel (compiling the
#            kernels in pyx/, OpenMP on) and installs that wheel into /opt/venv,
#            so the images run exactly what `pip install cnn-*.whl` gives a user.
#   base     python slim + libgomp1 (the only native library the compiled
#            kernels need beyond what the NumPy/SciPy/Pillow wheels bundle),
#            the venv from "build", a non-root user, /models and /state.
#   train    base + Debian's dataset-fashion-mnist (the data set, ~30 MB,
#            in /usr/share/datasets/fashion-mnist where cnn.data looks by
#            default). Only this image carries the data: serving never reads it.
#   api      base; runs `cnn serve` (default target): gunicorn with the settings
#            the package ships (service/gunicorn.conf.py), no checkout file needed.
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
# Build the wheel, then install that file: what ships is what was built and
# tested, not a second build from the source tree. `pip wheel` builds the
# extensions in an isolated build env (Cython, NumPy headers, SciPy's
# cython_blas); installing the wheel puts the compiled modules and the package
# data (templates, gunicorn.conf.py) into /opt/venv's site-packages. The import
# check fails the build if a kernel did not compile, the service does not
# import or the packaged gunicorn settings are missing.
RUN pip install --upgrade pip \
 && pip wheel --no-deps --wheel-dir /wheels . \
 && pip install /wheels/cnn-*.whl \
 && cd / && python -c "import cnn._conv, cnn._dense, service; from cnn.serve import settings_path; print('cnn', cnn.__version__, 'built;', settings_path())"

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

# Non-root user; /models and /state belong to it so that a named volume
# mounted there starts out writable by it (Docker copies the mount point's
# ownership into an empty named volume). /state is for CNN_STATE_DIR when the
# models volume is mounted read-only (docker-compose.yml, deploy/k8s/).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/cnn cnn \
 && mkdir -p /models /state /app \
 && chown cnn:cnn /models /state
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

USER cnn
EXPOSE 8000

# Liveness: the process answers HTTP. No curl in slim images, so python's
# urllib; the port follows CNN_BIND like gunicorn.conf.py does. (compose
# overrides this with /ready, which also requires a loaded model.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('CNN_BIND', '0.0.0.0:8000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)"]

# Exec form, and `cnn serve` execs gunicorn with the packaged settings: gunicorn
# is the process that receives `docker stop`'s SIGTERM and shuts its workers
# down gracefully (graceful_timeout in service/gunicorn.conf.py).
CMD ["cnn", "serve"]
