"""Benchmarks (not tests): ``python -m cnn.bench`` and ``python -m cnn.bench.serve``.

One module per idea, so that a reader finds a figure's code by its name:

    cli          the command line of ``python -m cnn.bench`` (its --help is the guide)
    targets      one function per row of the one table, and run_all that prints it
    report       the table: rows, columns, formatting, machine line, footnotes
    machine      the CPU's features, the kernels' build, the SGEMM peak
    flops        FLOPs per image of a model, from its layer shapes
    timing       medians of repeated calls, epoch times, interleaved rounds
    workloads    what cnn runs: a training step, the ``cnn.train`` recipe
    peers        PyTorch and ONNX Runtime, always in child processes
    kernels      ``python -m cnn.bench kernels``: per-op tables
    train_epoch  ``python -m cnn.bench train``: one epoch per backend
    serve        ``python -m cnn.bench.serve``: HTTP load under real gunicorn
    server       starting and stopping that gunicorn on loopback (also used
                 by the checkout's benchmarks/*.py)

Nothing is imported here, so ``python -m cnn.bench.serve`` does not load the
table's code; ``main`` is the one every ``cnn`` command module has.
"""


def main(argv=None):
    """``cnn bench [...]``, the same as ``python -m cnn.bench [...]`` (cnn.bench.cli)."""
    from cnn.bench.cli import main
    return main(argv)
