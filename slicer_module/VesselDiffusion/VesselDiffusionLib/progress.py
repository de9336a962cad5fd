"""Progress reports and cancellation for work that runs off the GUI thread.

The computation calls :meth:`Progress.report` at checkpoints; the GUI reads the
latest report from another thread and may call :meth:`Progress.cancel`. The next
checkpoint then raises :class:`Cancelled`, so the computation stops there and its
partial result is never written to the scene. Between two checkpoints (for
example during one Sinkhorn solve) the computation cannot be interrupted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundJob", "Cancelled", "Progress", "run_with_progress"]


class Cancelled(Exception):
    """Raised at a checkpoint after the user cancelled the computation."""


class Progress:
    """Latest progress of one computation, shared between two threads.

    Parameters
    ----------
    callback : callable, optional
        Called as ``callback(fraction, message)`` on the computing thread at
        each report, for logging or for scripts that run without a GUI.
    """

    def __init__(self, callback: Callable[[float, str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._cancel_requested = threading.Event()
        self._fraction = 0.0
        self._message = ""
        self._callback = callback

    def report(self, fraction: float, message: str) -> None:
        """Record progress (a fraction in [0, 1]) and stop here if cancelled."""
        with self._lock:
            self._fraction = min(max(float(fraction), 0.0), 1.0)
            self._message = message
        if self._callback is not None:
            self._callback(self._fraction, message)
        self.raise_if_cancelled()

    def cancel(self) -> None:
        """Ask the computation to stop at its next checkpoint."""
        self._cancel_requested.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel_requested.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` if :meth:`cancel` was called."""
        if self._cancel_requested.is_set():
            raise Cancelled("cancelled by the user")

    def snapshot(self) -> tuple[float, str]:
        """Return the latest fraction and message."""
        with self._lock:
            return self._fraction, self._message


class BackgroundJob:
    """Run a function in a daemon thread and keep its return value or exception."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self._function = function
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="VesselDiffusion", daemon=True)

    def _run(self) -> None:
        try:
            self._result = self._function()
        except BaseException as error:  # re-raised on the GUI thread by result()
            self._error = error

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    @property
    def done(self) -> bool:
        """Whether the function has returned or raised."""
        return not self._thread.is_alive()

    def result(self) -> Any:
        """Return the function's value, or raise its exception, once done."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def run_with_progress(
    function: Callable[[], Any],
    progress: Progress,
    *,
    update: Callable[[float, str], None],
    cancel_requested: Callable[[], bool],
    process_events: Callable[[], None],
    interval: float = 0.05,
) -> Any:
    """Run ``function`` in a background thread while the caller's loop stays live.

    Every ``interval`` seconds, until the thread ends, this calls
    ``process_events()`` (Qt event processing in Slicer), passes the latest
    report to ``update`` (the progress dialog) and, once ``cancel_requested()``
    returns True, cancels ``progress``. Returns the function's value, or raises
    its exception, :class:`Cancelled` included.
    """
    job = BackgroundJob(function)
    job.start()
    while not job.done:
        process_events()
        update(*progress.snapshot())
        if not progress.cancelled and cancel_requested():
            progress.cancel()
        time.sleep(interval)
    return job.result()
