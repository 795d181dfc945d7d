#!/usr/bin/env bash
# Set up cnn on a fresh Debian machine: the Fashion-MNIST data set (Debian's
# dataset-fashion-mnist, under /usr/share/datasets/fashion-mnist), then the
# package itself with its test tools, which compiles the Cython kernels.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
    else
        echo "setup: no apt-get here; get Fashion-MNIST's four IDX files yourself and" \
             "pass --data-dir DIR to python -m cnn.train" >&2
    fi
fi

python3 -m pip install --quiet --upgrade pip
# mpi: mpi4py and Open MPI, so the tests of training over MPI run (tests/test_distributed.py)
python3 -m pip install --quiet -e ".[test,mpi]"
