"""``python -m cnn.train`` end to end on small generated IDX data: resuming with
the run's own settings, checkpoints within epochs (kill -9, then a bit-identical
resume), the interrupt message, and the output checked before training."""
import errno
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnn.train
from cnn.io import read_model_file

ROOT = Path(__file__).resolve().parents[1]
# Dropout and augmentation: a resume that loses the model's or the loop's RNG
# state gives other weights.
ARCH = "conv4k3p1-relu-maxpool2-flatten-dropout0.3-dense10"
COMMON = ["--arch", ARCH, "--augment", "both", "--progress", "lines", "--threads", "1",
          "--data-dir", "data"]


@pytest.fixture
def workdir(tmp_path, make_idx_dir):
    """A folder with ``data/``: 240 training and 40 test images of 28x28 noise."""
    make_idx_dir("data", n_train=240, n_test=40)
    return tmp_path


def env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for key in ("CNN_BACKEND", "CNN_NUM_THREADS", "CNN_DATA_DIR"):
        env.pop(key, None)
    return env


def train(cwd, *args, common=True, timeout=120, **kwargs):
    return subprocess.run([sys.executable, "-m", "cnn.train", *(COMMON if common else []),
                           *map(str, args)], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def start(cwd, *args):
    return subprocess.Popen([sys.executable, "-m", "cnn.train", *COMMON, *map(str, args)],
                            cwd=cwd, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def procs():
    """Background runs of the test, killed at its end if still running."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def assert_clean_error(proc, *words, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def checkpoint(path):
    return read_model_file(path)[0]["checkpoint"]


def assert_same_weights(a, b):
    wa, wb = [{k: v for k, v in read_model_file(p)[1].items() if k.startswith("param/")}
              for p in (a, b)]
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)


def wait_for(predicate, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def has_position(path):
    try:
        return checkpoint(path)["position"] is not None
    except Exception:          # not written yet
        return False


# ------------------------------------------------------------------ --resume settings


def test_resume_keeps_the_runs_settings_and_rejects_conflicting_flags(workdir, make_idx_dir,
                                                                       monkeypatch, capsys):
    ok(train(workdir, "--limit", 200, "--batch-size", 32, "--epochs", 2, "--schedule", "step",
             "--out", "run/m.npz"))

    # No flag but --resume: the same 2-epoch run, finished; not the default 5 epochs.
    out = ok(train(workdir, "--resume", "--out", "run/m.npz", common=False))
    assert "batch 32" in out and "(step), 2 epochs" in out and "augment both" in out
    assert "nothing to train" in out and "Epoch 3" not in out
    assert len(json.loads((workdir / "run/m.history.json").read_text())["history"]) == 2
    before = (workdir / "run/m.npz").read_bytes()

    # Flags that would make another run are errors, found before the data is read
    # (so checked in-process: main's return value is the exit status).
    monkeypatch.chdir(workdir)
    for flags, words in [(["--limit", "100"], ["--limit 100", "--limit 200"]),
                         (["--arch", "lenet5"], ["--arch lenet5", ARCH]),
                         (["--lr", "0.01"], ["--lr 0.01", "--lr 0.001"]),
                         (["--seed", "3"], ["--seed 3"]),
                         (["--augment", "flip"], ["--augment flip", "--augment both"]),
                         (["--batch-size", "64"], ["--batch-size 64", "--batch-size 32"]),
                         (["--resume", "run/m.ckpt", "--out", "other.npz"],
                          ["--out other.npz", "run/m.npz"]),
                         (["--epochs", "1"], ["--epochs 1", "already holds 2 epochs"])]:
        assert cnn.train.main(["--resume", "--out", "run/m.npz", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("cnn.train: error: ") and len(err.splitlines()) == 1, err
        assert all(word in err for word in words), (words, err)
    assert not (workdir / "other.npz").exists()
    assert (workdir / "run/m.npz").read_bytes() == before
    # The same values as the run's are fine.
    assert cnn.train.main(["--resume", "--out", "run/m.npz", "--limit", "200", "--epochs",
                           "2", "--data-dir", "data", "--progress", "lines"]) == 0
    assert "nothing to train" in capsys.readouterr().out

    # Extending is explicit, and says that the schedule changes.
    out = ok(train(workdir, "--resume", "--out", "run/m.npz", "--epochs", 3, common=False))
    assert "from 2 to 3 epochs" in out and "step learning-rate schedule now spans 3" in out
    assert "Epoch 3/3" in out
    assert checkpoint(workdir / "run/m.ckpt")["args"]["epochs"] == 3

    # Other training data under the same settings: not the run's data.
    make_idx_dir("data2", n_train=240, n_test=40, seed=1)
    assert cnn.train.main(["--resume", "--out", "run/m.npz", "--data-dir", "data2"]) == 2
    assert "--data-dir: the training images in" in capsys.readouterr().err


def test_resume_with_more_epochs_equals_the_longer_run(workdir, procs):
    """Constant learning rate: 1 epoch, then --resume --epochs 2 is the 2-epoch run."""
    args = ["--limit", 200, "--batch-size", 16, "--schedule", "constant"]
    procs.append(start(workdir, *args, "--epochs", 2, "--out", "ref/m.npz"))
    assert "Epoch 1/1" in ok(train(workdir, *args, "--epochs", 1, "--out", "run/m.npz"))
    out = ok(train(workdir, "--resume", "--out", "run/m.npz", "--epochs", 2, common=False))
    assert "the learning rate is constant, so the schedule does not change" in out
    assert "resuming from run/m.ckpt after epoch 1" in out
    assert "Epoch 2/2" in out and "Epoch 1/2" not in out
    history = json.loads((workdir / "run/m.history.json").read_text())
    assert [h["epoch"] for h in history["history"]] == [1, 2]
    assert history["summary"]["epochs"] == 2
    assert procs[0].wait(timeout=120) == 0, procs[0].communicate()
    assert_same_weights(workdir / "run/m.npz", workdir / "ref/m.npz")
    ref = json.loads((workdir / "ref/m.history.json").read_text())["history"]
    assert [h["loss"] for h in history["history"]] == [h["loss"] for h in ref]


# ------------------------------------------------------------- checkpoints, kill -9


def test_kill_9_mid_epoch_then_resume_gives_the_same_weights(workdir, procs):
    """A checkpoint every 4 steps; kill -9 once one was saved within an epoch; the
    resumed run ends with the weights of a run never stopped, bit for bit."""
    args = ["--limit", 240, "--batch-size", 2, "--epochs", 2]     # 108 steps per epoch
    procs.append(start(workdir, *args, "--out", "ref/m.npz"))
    victim = start(workdir, *args, "--out", "run/m.npz", "--checkpoint-every", 4)
    procs.append(victim)
    ckpt = workdir / "run/m.ckpt"
    wait_for(lambda: has_position(ckpt), victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    saved = checkpoint(ckpt)
    step = saved["position"]["step"] if saved["position"] else 0
    assert step % 4 == 0 or saved["position"] is None

    resumed = ok(train(workdir, "--resume", "--out", "run/m.npz", common=False))
    where = f"in epoch {saved['epoch'] + 1} at step {step}/108" if step else \
        f"after epoch {saved['epoch']}"
    assert f"resuming from run/m.ckpt {where}" in resumed, resumed
    assert "Epoch 2/2" in resumed
    ref = procs[0]
    assert ref.wait(timeout=120) == 0, ref.communicate()
    assert_same_weights(workdir / "run/m.npz", workdir / "ref/m.npz")
    history = [json.loads((workdir / f"{d}/m.history.json").read_text())["history"]
               for d in ("run", "ref")]
    assert [h["loss"] for h in history[0]] == [h["loss"] for h in history[1]]


@pytest.mark.parametrize("text, value", [("200", ("steps", 200)), ("30s", ("seconds", 30.0)),
                                         ("1.5m", ("seconds", 90.0))])
def test_checkpoint_every_values(text, value):
    assert cnn.train.build_parser().parse_args(["--checkpoint-every", text]) \
        .checkpoint_every == value
    assert cnn.train.build_parser().parse_args([]).checkpoint_every == ("seconds", 60.0)


@pytest.mark.parametrize("bad", ["0", "-3", "abc", "5x", "0s", "nans", "1.5", ""])
def test_checkpoint_every_bad_values(bad, capsys):
    with pytest.raises(SystemExit) as exit:
        cnn.train.main(["--checkpoint-every", bad])
    assert exit.value.code == 2
    assert "argument --checkpoint-every: expected a number of steps" in \
        capsys.readouterr().err


# ------------------------------------------------------------------ interrupts


def test_interrupt_names_only_what_this_run_saved(workdir, procs):
    # An earlier, different run left run/m.ckpt.
    ok(train(workdir, "--limit", 40, "--epochs", 1, "--out", "run/m.npz"))
    earlier = (workdir / "run/m.ckpt").read_bytes()

    # Interrupted before its first checkpoint (the naive kernels: a slow epoch).
    proc = start(workdir, "--limit", 240, "--batch-size", 1, "--backend", "naive",
                 "--epochs", 1, "--out", "run/m.npz")
    procs.append(proc)
    assert "writing run/m.npz" in "".join(proc.stdout.readline() for _ in range(3))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "saved no checkpoint" in err and "run/m.ckpt is an earlier run's" in err, err
    assert "--resume" not in err
    assert (workdir / "run/m.ckpt").read_bytes() == earlier

    # Interrupted after a checkpoint within the epoch: the full command to continue.
    proc = start(workdir, "--limit", 80, "--batch-size", 1, "--backend", "naive",
                 "--epochs", 1, "--out", "run/m.npz", "--checkpoint-every", 2)
    procs.append(proc)
    wait_for(lambda: has_position(workdir / "run/m.ckpt"), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "is saved in run/m.ckpt; continue with: " in err, err
    command = shlex.split(err.split("continue with: ")[1].strip())
    assert command[1:] == ["-m", "cnn.train", "--resume", "run/m.ckpt"]
    out = ok(subprocess.run([sys.executable, *command[1:]], cwd=workdir, env=env(),
                            capture_output=True, text=True, timeout=120))
    assert "resuming from run/m.ckpt in epoch 1 at step" in out and "Epoch 1/1" in out


# ------------------------------------------------------------------ the output


def test_output_problems_are_found_before_training(workdir, monkeypatch, capsys):
    (workdir / "folder.npz").mkdir()
    (workdir / "a_file").write_text("")
    (workdir / "side").mkdir()
    (workdir / "side/m.ckpt").mkdir()
    monkeypatch.chdir(workdir)
    for out, words in [("folder.npz", ["--out: 'folder.npz' is a folder"]),
                       ("side/", ["--out: 'side/' is a folder"]),
                       ("a_file/m.npz", ["--out: cannot write in", "a_file"]),
                       ("side/m.npz", ["'side/m.ckpt' (written beside 'side/m.npz') is a "
                                       "folder"])]:
        assert cnn.train.main([*COMMON, "--limit", "40", "--out", out]) == 2, out
        captured = capsys.readouterr()
        assert all(word in captured.err for word in words), (words, captured.err)
        assert len(captured.err.splitlines()) == 1 and "Epoch" not in captured.out
    assert not (workdir / "side/m.npz").exists()


def test_stale_temp_files_are_removed_and_live_ones_kept(workdir):
    """Also: --out without .npz gets it (the service serves only *.npz files)."""
    run = workdir / "run"
    run.mkdir()
    old = time.time() - 3600
    stale = [run / ".m.npz.k2j4_x9a.tmp", run / ".m.ckpt.abcdefgh.tmp",
             run / ".m.history.json.q1w2e3r4.tmp"]
    keep = [run / ".m.ckpt.fresh123.tmp",          # a live writer's (just touched)
            run / ".other.npz.abcdefgh.tmp",       # another model's
            run / "m.ckpt.abcdefgh.tmp"]           # not atomic_write's name
    for path in stale + keep:
        path.write_bytes(b"partial")
        if path.name != ".m.ckpt.fresh123.tmp":
            os.utime(path, (old, old))
    out = ok(train(workdir, "--limit", 40, "--epochs", 1, "--out", "run/m"))
    assert "--out run/m: writing run/m.npz (the service serves only *.npz files)" in out
    assert (run / "m.npz").is_file() and (run / "m.ckpt").is_file()
    assert not (run / "m").exists()
    assert "removed 3 temporary file(s) left by a killed run" in out
    assert [p for p in stale if p.exists()] == []
    assert [p for p in keep if not p.exists()] == []


def test_write_error_is_one_line_and_exit_74_with_earlier_files_intact(workdir):
    ok(train(workdir, "--limit", 40, "--epochs", 1, "--out", "run/m.npz"))
    earlier = {p.name: p.read_bytes() for p in (workdir / "run").iterdir()}
    # Files may grow to 16 KiB only: the checkpoint (7,890 parameters and Adam's
    # two slots) cannot be written, as on a full disk.
    limit = 16 * 1024
    proc = train(workdir, "--limit", 40, "--epochs", 1, "--out", "run/m.npz",
                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                       (limit, limit)))
    assert_clean_error(proc, "cannot write run/m.ckpt: File too large", code=74)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert {p.name: p.read_bytes() for p in (workdir / "run").iterdir()} == earlier


def test_full_disk_at_the_end_keeps_the_checkpoint(workdir, monkeypatch, capsys):
    """ENOSPC writing the weights file after training: one line, exit 74, and
    the checkpoint of the finished run to continue from."""
    save_model = cnn.train.save_model

    def full_disk(path, *args, **kwargs):
        if str(path).endswith(".npz"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save_model(path, *args, **kwargs)
    monkeypatch.setattr(cnn.train, "save_model", full_disk)
    monkeypatch.chdir(workdir)
    code = cnn.train.main([*COMMON, "--limit", "40", "--epochs", "1", "--out", "m.npz"])
    err = capsys.readouterr().err
    assert code == 74
    assert err.strip() == ("cnn.train: error: cannot write m.npz: No space left on device; "
                           f"epoch 1 (finished) is saved in m.ckpt; continue with: "
                           f"{os.path.basename(sys.executable)} -m cnn.train --resume m.ckpt")
    assert not (workdir / "m.npz").exists() and checkpoint(workdir / "m.ckpt")["epoch"] == 1


def test_too_little_free_space_is_found_before_training(workdir, monkeypatch, capsys):
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(
        10**9, 10**9 - 1000, 1000))
    monkeypatch.chdir(workdir)
    code = cnn.train.main([*COMMON, "--limit", "40", "--out", "m.npz"])
    assert code == 2
    assert "MiB free; the run's files need about" in capsys.readouterr().err
    assert not (workdir / "m.ckpt").exists()


def test_ctrl_c_is_held_while_a_checkpoint_is_written_whichever_thread_gets_it():
    """SIGINT sent to the process from another thread (the kernel may hand it to
    any thread that does not block it) is raised only after the block."""
    import threading
    reached_end, go = [], threading.Event()

    def send():   # started before the block: this thread's signal mask is the default
        go.wait(5)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=send)
    sender.start()
    with pytest.raises(KeyboardInterrupt):
        with cnn.train.ctrl_c_deferred():
            go.set()
            sender.join()
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:   # bytecodes: where Python raises it
                sum(range(100))
            reached_end.append(True)
    assert reached_end == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_early_stopping_keeps_the_best_epoch_and_a_resume_stops_too(workdir):
    out = ok(train(workdir, "--epochs", "6", "--early-stopping", "1", "--lr", "0.01",
                   "--schedule", "constant", "--out", "run/m.npz"))
    meta, arrays = read_model_file(workdir / "run/m.npz")
    summary = meta["summary"]
    history = json.loads((workdir / "run/m.history.json").read_text())["history"]
    val = [h["val_loss"] for h in history]
    best = 1 + int(np.argmin(val))
    assert summary["kept_epoch"] == best == summary["early_stopping"]["best_epoch"]
    assert summary["early_stopping"]["keep"] == "best"
    stopped = summary["early_stopping"]["stopped_epoch"]
    if stopped is not None:     # patience 1: one epoch after the best
        assert stopped == len(history) == best + 1 and "early stopping: val_loss" in out
    else:
        assert len(history) == 6 and best == 6
    # the weights file holds the kept epoch's weights, which the checkpoint kept aside
    ckpt_meta, ckpt = read_model_file(workdir / "run/m.ckpt")
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, ckpt["opt/_best/" + key[len("param/"):]])
    # the CSV log: a header and one row per epoch
    rows = (workdir / "run/m.history.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss,acc,val_loss,val_acc,lr,time" and len(rows) == 1 + len(history)
    assert float(rows[best].split(",")[3]) == pytest.approx(val[best - 1])
    assert (workdir / "run/m.png").read_bytes().startswith(b"\x89PNG")
    if stopped is not None:     # resuming a run that stopped early trains nothing more
        out = ok(train(workdir, "--resume", "run/m.ckpt", "--out", "run/m.npz", common=False))
        assert f"stopped early after epoch {stopped}; nothing to train" in out
        np.testing.assert_array_equal(read_model_file(workdir / "run/m.npz")[1]["param/0.w"],
                                      arrays["param/0.w"])


def test_keep_best_needs_a_validation_set_and_the_header_counts_epochs(workdir):
    assert_clean_error(train(workdir, "--keep", "best", "--val-fraction", "0"),
                       "--keep best needs a validation set")
    assert_clean_error(train(workdir, "--early-stopping", "0"), "--early-stopping")
    out = ok(train(workdir, "--epochs", "1", "--out", "run/one.npz"))
    assert "1 epoch, augment" in out and "1 epochs" not in out
    history = json.loads((workdir / "run/one.history.json").read_text())["history"]
    assert len(history[0]["curve"]) >= 3 and history[0]["curve"][-1][0] == 1.0


def test_sigterm_stops_like_ctrl_c_with_the_command_to_continue(workdir, procs):
    proc = start(workdir, "--limit", 80, "--batch-size", 1, "--backend", "naive",
                 "--epochs", 1, "--out", "run/m.npz", "--checkpoint-every", 2)
    procs.append(proc)
    wait_for(lambda: has_position(workdir / "run/m.ckpt"), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated (SIGTERM): " in err, err
    assert "is saved in run/m.ckpt; continue with: " in err and "--resume run/m.ckpt" in err
    assert has_position(workdir / "run/m.ckpt")
