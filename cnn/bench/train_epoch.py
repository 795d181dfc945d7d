"""``python -m cnn.bench train``: one training epoch of lenet5 and convnet.

Fashion-MNIST-sized epochs (60,000 images, batch 64, float32) on the Cython and
the NumPy backends, and in PyTorch when it is importable (a comparison only,
never a dependency), with the ratios. By default an epoch is timed as the
median step time of ``--steps`` steps times the epoch's step count;
``--full-epoch`` times whole epochs.
"""
import sys

from cnn.bench.peers import torch_epoch_seconds
from cnn.bench.report import machine_line, package_version
from cnn.bench.timing import epoch_seconds
from cnn.bench.workloads import EPOCH_IMAGES, train_step_cnn


def run_train(threads, batch, sample_steps, full_epoch, archs, out=None):
    out = out or sys.stdout
    print(machine_line(threads), file=out)
    steps_per_epoch = (EPOCH_IMAGES + batch - 1) // batch
    how = "timed whole" if full_epoch else f"median of {sample_steps} steps x {steps_per_epoch}"
    print(f"one training epoch: {EPOCH_IMAGES:,} images, batch {batch}, float32, SGD; "
          f"seconds ({how})", file=out)
    torch_version = package_version("torch")   # found, not imported: it runs in children
    head = (f"{'network':<10} {'cython s':>9} {'numpy s':>9} {'numpy/cython':>13} "
            f"{'torch s':>9} {'torch/cython':>13} {'torch-cl s':>11} {'torch-cl/cython':>16}")
    print(head + "\n" + "-" * len(head), file=out)
    for arch in archs:
        cy = epoch_seconds(train_step_cnn(arch, "cython", threads, batch), steps_per_epoch,
                           sample_steps, full_epoch)
        py = epoch_seconds(train_step_cnn(arch, "python", threads, batch), steps_per_epoch,
                           max(5, sample_steps // 4), False)
        line = f"{arch:<10} {cy:9.2f} {py:9.2f} {py / cy:12.2f}x"
        if torch_version:
            th = torch_epoch_seconds(arch, threads, batch, sample_steps, full_epoch, False)
            cl = torch_epoch_seconds(arch, threads, batch, sample_steps, full_epoch, True)
            line += f" {th:9.2f} {th / cy:12.2f}x {cl:11.2f} {cl / cy:15.2f}x"
        else:
            line += f" {'-':>9} {'-':>13} {'-':>11} {'-':>16}"
        print(line, file=out, flush=True)
    print(f"torch: {torch_version or 'not installed; pip install torch==2.13.0 to compare'}; "
          f"torch-cl is channels_last; ratios above 1 mean cython is faster", file=out)
