"""One thread for all of the process's model work: loading weights, engine steps, scoring, embeddings.

Why one thread: PyTorch's CPU operators run on OpenMP, and every thread that enters a parallel
region gets a team of its own that lives as long as the thread. With two teams (say the main
thread's, made while loading a model, and the engine's) there are more OpenMP threads than CPUs, and
libgomp then all but stops spin-waiting between parallel regions: each of the ~200 regions of a
decode step pays a futex wake-up. A SmolLM2 decode made 22 tokens/s that way against 38 with one team
(docs/engine.md). So whatever calls in — the CLI, the server's event loop, its worker threads, a
user's own threads — the work itself runs here, on one thread, and the process keeps one team.

`run(fn, ...)` runs a job here and returns its result (or raises its exception) in the caller;
called from this thread it just calls `fn`. Engines `attach` themselves: between jobs the thread
steps every attached engine that has work, one step each in turn, so a long job (a model load, a batch of
log-likelihoods) delays generation by at most one job, and jobs wait at most one round of steps.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; a no-op elsewhere).

    A prompt chunk's temporaries (activations, dequantized weights) are megabytes each, and glibc
    keeps such freed blocks in the process once it has raised its mmap threshold: resident memory
    then creeps up with every prompt length seen. Called after steps that had a long chunk."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class Steppable(Protocol):
    def has_work(self) -> bool: ...  # must not block: it is asked under the thread's lock

    def run_step(self) -> None: ...  # one step; must not raise


class _Worker:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: deque[tuple[Future, Callable, tuple, dict]] = deque()
        self._engines: weakref.WeakSet[Steppable] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.is_current():
            return fn(*args, **kwargs)
        future: Future = Future()
        with self._cond:
            self._start()
            self._jobs.append((future, fn, args, kwargs))
            self._cond.notify()
        return future.result()

    def attach(self, engine: Steppable) -> None:
        """Step `engine` whenever it has work, from now on (again: it has new work)."""
        with self._cond:
            self._engines.add(engine)
            self._start()
            self._cond.notify()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="genforge-compute", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping and not self._busy():
                    self._cond.wait()
                if self._stopping and not self._jobs:
                    return
                job = self._jobs.popleft() if self._jobs else None
                busy = [] if job else self._busy()
            if job is not None:
                future, fn, args, kwargs = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as exc:  # noqa: BLE001 - it belongs to the caller
                        future.set_exception(exc)
            for engine in busy:
                engine.run_step()

    def _busy(self) -> list[Steppable]:
        return [e for e in list(self._engines) if e.has_work()]

    def stop(self) -> None:
        """Finish the job or step in progress (and queued jobs), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


_WORKER = _Worker()
run = _WORKER.run
attach = _WORKER.attach
is_current = _WORKER.is_current

# A thread still inside a matmul when the interpreter shuts down aborts the process. Registered
# at import, so it runs after the handlers of the modules that import this one (engines close first).
atexit.register(_WORKER.stop)
