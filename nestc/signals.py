"""A `kill` ends a nestc command the way Ctrl-C does.

Python dies on SIGTERM (what `kill`, `timeout`, `docker stop` and job schedulers send) without
running a single `finally`: a training run would lose every step since its last checkpoint, and a
benchmark would leave its child processes running and its temporary inductor cache on disk. Under
`terminate_as_interrupt()` the first SIGTERM raises KeyboardInterrupt in the main thread instead,
so the paths that handle Ctrl-C run: `nestc bench` stops its child process and removes its
cache. A second SIGTERM is not caught (the default handler is back): whoever sends it wants the
process gone now. A training run handles both signals itself while its loop runs
(`runtime/interrupts.py`: the first stops it at the end of the step in progress, whose checkpoint
it writes); around the loop (building the model, the final evaluation) this module's handler
applies.
"""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within the block, the first SIGTERM raises KeyboardInterrupt. Does nothing outside the main
    thread (only it may set handlers) or where a handler other than the default is installed (an
    application embedding nestc keeps its own)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def on_terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
