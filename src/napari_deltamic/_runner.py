"""The widget's fit runner: a napari thread worker driving the pipeline's fit, step by step.

:class:`FitRunner` starts ``deltamic_core.pipeline.fit_steps`` on a prepared FitJob in a
``thread_worker`` generator that yields one :class:`Step` per iteration. The worker never
touches layers: the yielded values are delivered on the main thread (Qt queued signal), so
the viewer stays responsive and Stop/close ask the generator to quit after the current step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import Qt


@dataclass
class Step:
    """What the worker hands to the main thread after each iteration (plain numpy, no tensors)."""

    iteration: int  # 1-based, over all levels
    loss: float  # NaN when rolled back
    verts: np.ndarray  # (V, 3) um, world coordinates
    faces: np.ndarray  # (F, 3)
    labels: np.ndarray | None  # (F, 2) or None
    level: int
    rolled_back: bool
    psf_params: dict  # the PSF model's as_dict() (changes with "learn PSF")
    seconds: float  # wall time of this iteration
    since_start: float  # wall time since the fit was started (includes building the fit plan)


def fit_step_values(prepared, t0: float, holder: dict):
    """Worker body: the pipeline's fit steps as :class:`Step` values.

    The Fitter lives only in ``holder`` (see ``pipeline.fit_steps``): clearing it releases the
    solver and render plan even while the quit generator stays suspended.
    """
    from deltamic_core.pipeline import fit_steps

    t_prev = time.perf_counter()
    for res in fit_steps(prepared, holder):
        now = time.perf_counter()
        labels = None if res.labels is None else np.asarray(res.labels, dtype=np.int32)
        step = Step(
            int(res.iteration),
            float(res.loss),
            np.asarray(res.verts, dtype=np.float64),
            np.asarray(res.faces, dtype=np.int64),
            labels,
            int(res.level),
            bool(res.rolled_back),
            dict(res.psf_params),
            now - t_prev,
            now - t0,
        )
        del res
        yield step
        t_prev = time.perf_counter()


class FitRunner:
    """One fit at a time in a background thread; callbacks run on the main thread.

    ``on_step(Step)``, ``on_error(exception)`` and ``on_finished()`` are the worker's
    ``yielded``, ``errored`` and ``finished`` signals.
    """

    def __init__(self, on_step: Callable, on_error: Callable, on_finished: Callable):
        self._on_step, self._on_error, self._on_finished = on_step, on_error, on_finished
        self.worker = None
        self._holder: dict = {}
        self._thread_done = threading.Event()
        self.started_at = 0.0
        self.last_result = None  # FitResult of the last finished fit
        self.last_timings: dict = {}
        self.last_prepared = None

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def start(self, prepared) -> None:
        from napari.qt.threading import create_worker

        if self.worker is not None:
            raise ValueError("a fit is already running: stop it first")
        self._holder = {}
        self.last_result, self.last_prepared = None, prepared
        self.started_at = time.perf_counter()
        worker = create_worker(fit_step_values, prepared, self.started_at, self._holder, _start_thread=False)
        worker.yielded.connect(self._on_step)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._finished)
        # set from the worker thread itself, so shutdown() can wait without an event loop
        self._thread_done = threading.Event()
        worker.finished.connect(self._thread_done.set, Qt.DirectConnection)
        self.worker = worker
        worker.start()

    def _finished(self) -> None:
        self.worker = None
        fitter = self._holder.get("fitter")
        if fitter is not None:
            try:  # the fit's final state (as the CLI reports it); the thread has ended
                self.last_result = fitter.result()
                self.last_timings = {
                    "fit_s": time.perf_counter() - self.started_at,
                    "per_iteration_s": (time.perf_counter() - self.started_at) / max(fitter.iteration, 1),
                    **{f"fitter_{k}_s": float(v) for k, v in self.last_result.timings.items()},
                }
            except Exception:  # noqa: BLE001 - a report without the fit's history, not a crash
                self.last_result = None
        self._holder.clear()  # release the Fitter (solver, render plan) now
        self._on_finished()

    def stop(self) -> None:
        """Ask the fit to stop after the current iteration."""
        if self.worker is not None:
            self.worker.quit()

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Stop a running fit and wait (up to ``timeout_s``) for its thread to end, processing no
        Qt events (safe inside napari's close sequence). True if no fit is running any more."""
        worker = self.worker
        if worker is None:
            return True
        try:
            worker.yielded.disconnect(self._on_step)
        except (TypeError, RuntimeError):
            pass
        worker.quit()
        if self._thread_done.wait(timeout_s):
            self.worker = None
            self._holder.clear()
            return True
        return False
