"""Ctrl-C and `kill` during a training run: stop after the step in progress, not in its middle.

A KeyboardInterrupt can land anywhere in a step: between two parameters of the optimizer's
update, or after a backward pass has added this step's gradients to the sums that levels of
every C steps keep. A checkpoint written then holds a state no step boundary ever had, labelled
as the last whole step, and a resume would start from it. So during `Trainer.run` the first
SIGINT or SIGTERM only asks the loop to stop (`StopRequests.requested`); the loop finishes the
step in progress and stops at its boundary, where the state is whole and the checkpoint is
exact. A second signal stops at once (KeyboardInterrupt), for a step that takes too long (a
first compiled step compiles for minutes); the trainer then writes no checkpoint for the step it
cut, since its state may be half-updated.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "a kill (SIGTERM)"}


class StopRequests:
    """A context manager. Within it, the first SIGINT or SIGTERM sets `requested` (what was
    pressed or sent) and calls `on_request(what)`; the next one raises KeyboardInterrupt. Outside
    the main thread (where Python delivers no signals) it does nothing, and `requested` stays None."""

    def __init__(self, on_request: Callable[[str], None] | None = None):
        self.requested: str | None = None
        self.on_request = on_request
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt(SIGNALS[signum])
        self.requested = SIGNALS[signum]
        if self.on_request is not None:
            self.on_request(self.requested)
