"""Ctrl-C and SIGTERM during training: the run stops at once, but never in the
middle of writing a checkpoint, and the message names the checkpoint to
continue from. SIGTERM (docker stop, kill, a batch scheduler) stops a run as
Ctrl-C does, with exit status 143 instead of 130.
"""
import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)   # held while a checkpoint is written


@contextlib.contextmanager
def ctrl_c_deferred():
    """Hold Ctrl-C and SIGTERM until the block ends: a checkpoint is saved and
    recorded as saved together, so the interrupt message never misses one.

    The Python handler is swapped, not the signal mask: a mask only covers the
    calling thread, and the kernel hands a process-wide SIGINT to any thread
    that does not block it (OpenBLAS's, OpenMP's, tqdm's), after which Python
    runs the handler in the main thread anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit = []
    old = {sig: signal.signal(sig, lambda signum, frame: hit.append(signum))
           for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(hit):
            handler = old[sig]
            if handler is signal.SIG_IGN:
                continue
            if callable(handler):
                handler(sig, None)     # (ours raise: KeyboardInterrupt, Terminated)
            else:
                raise KeyboardInterrupt


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, kill, a batch scheduler): stopped like Ctrl-C."""


def raise_terminated(signum, frame):
    raise Terminated


def interrupted_status(exc):
    return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
