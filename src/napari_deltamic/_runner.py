"""The widget's fit runner: the job prepared and fitted in a napari thread worker, the newest
state handed to the main thread at the pace it can draw.

:class:`FitRunner` runs one fit at a time. The worker thread does all of the work: it prepares
the job (``pipeline.prepare``: the input checks, seed radii, the initial mesh), builds the
fit and steps it (``pipeline.fit_steps``). It never touches a layer: it posts into a
:class:`Mailbox` (the prepared job once, then every step), and a timer on the main thread
takes what is there: the newest state only (states the viewer had no time to draw are
dropped), the loss of every step. Stop cancels the step in progress (``Fitter.cancel``): the
fit ends within a stage of the step, keeping the last completed one.

Failures of the worker reach the main thread as a :class:`FitError` at the end of the run,
never as an exception raised out of the generator: superqt's worker takes a RuntimeError that
escapes it for "the Qt object was deleted" and ends without its ``errored`` and ``finished``
signals, and the fit's own errors (``FitDivergedError``, ``FitCancelled``, torch's) are
RuntimeErrors.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer


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
    since_start: float  # wall time since Run (includes preparing the job and the fit's plan)


class FitError(Exception):
    """A failure in the fit's worker, with the original exception (``original``) and its message.

    Deliberately not a RuntimeError (see the module's docstring)."""

    def __init__(self, original: BaseException):
        super().__init__(str(original) or type(original).__name__)
        self.original = original


@dataclass
class Delivery:
    """What the worker posted since the main thread last looked."""

    prepared: object = None  # the prepared job (pipeline.Prepared), once, first
    notes: list = field(default_factory=list)  # the pipeline's InputWarnings while preparing it
    latest: Step | None = None  # the newest accepted step
    losses: list = field(default_factory=list)  # (iteration, loss, seconds) of every accepted step
    rolled_back: list = field(default_factory=list)  # iterations whose step was rolled back

    def __bool__(self) -> bool:
        return self.prepared is not None or self.latest is not None or bool(self.rolled_back)


class Mailbox:
    """Latest-value slot between the worker (``post_*``) and the main thread (:meth:`take`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._box = Delivery()
        self.error: FitError | None = None

    def post_prepared(self, prepared, notes: list) -> None:
        with self._lock:
            self._box.prepared, self._box.notes = prepared, list(notes)

    def post_step(self, step: Step) -> None:
        with self._lock:
            if step.rolled_back:
                self._box.rolled_back.append(step.iteration)
            else:
                self._box.latest = step  # an older state not yet taken is dropped
                self._box.losses.append((step.iteration, step.loss, step.seconds))

    def take(self) -> Delivery:
        """What was posted since the last take; the prepared job alone first (its initial mesh
        is shown before any fitted state)."""
        with self._lock:
            box = self._box
            if box.prepared is not None:
                first = Delivery(prepared=box.prepared, notes=box.notes)
                box.prepared, box.notes = None, []
                return first
            self._box = Delivery()
        return box


def _to_step(res, seconds: float, since_start: float) -> Step:
    return Step(
        int(res.iteration),
        float(res.loss),
        np.asarray(res.verts, dtype=np.float64),
        np.asarray(res.faces, dtype=np.int64),
        None if res.labels is None else np.asarray(res.labels, dtype=np.int32),
        int(res.level),
        bool(res.rolled_back),
        dict(res.psf_params),
        seconds,
        since_start,
    )


def _prepare(make_prepared: Callable, mailbox: Mailbox):
    """``make_prepared()`` with the pipeline's InputWarnings collected for the main thread (as
    notifications there); other warnings go on as usual."""
    from deltamic_core.pipeline.errors import InputWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        prepared = make_prepared()
    notes = []
    for w in caught:
        if issubclass(w.category, InputWarning):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    mailbox.post_prepared(prepared, notes)
    return prepared


def fit_worker(make_prepared: Callable, holder: dict, mailbox: Mailbox, t0: float, server=None):
    """Worker body: prepare the job, then fit it step by step, posting into ``mailbox``.

    Yields nothing useful (a yield between steps lets ``worker.quit()`` end it). The Fitter
    lives only in ``holder`` (see ``pipeline.fit_steps``): clearing it releases the solver and
    the render plan even while the quit generator stays suspended. Never raises: a failure is
    left in ``mailbox.error``; a cancelled step (Stop) simply ends the fit.

    ``server``: the fit server, still warming up when the fit started. As soon as it is ready
    (checked between steps) the fit is handed over to it: the Fitter's state
    (``Fitter.export_state``) goes with the job, the server goes on from there and this
    worker relays its states as :func:`server_worker` does (``holder["sent"]`` is then set).
    """
    from deltamic_core.fit import FitCancelled
    from deltamic_core.pipeline import fit_steps

    try:
        prepared = _prepare(make_prepared, mailbox)
        if holder["stop"].is_set():
            return
        t_prev = time.perf_counter()
        steps = fit_steps(prepared, holder)
        for res in steps:
            now = time.perf_counter()
            mailbox.post_step(_to_step(res, now - t_prev, now - t0))
            del res
            yield None
            if server is not None and _hand_over(prepared, server, holder):
                steps.close()
                del prepared
                break
            t_prev = time.perf_counter()
        else:
            return
        yield from _relay(server, holder, mailbox, t0)
    except Exception as exc:  # noqa: BLE001 - reported on the main thread when the worker ends
        if not isinstance(exc, FitCancelled):
            _failed(exc, holder, mailbox)


def _failed(exc: Exception, holder: dict, mailbox: Mailbox) -> None:
    from deltamic_core.pipeline.fit_server import FitServerError

    mailbox.error = FitError(exc)
    if isinstance(exc, FitServerError):
        holder["server_broken"] = True


def _hand_over(prepared, server, holder: dict) -> bool:
    """Send the thread's fit to the fit server if it is ready now (between two steps; not
    after a Stop, nor with a cell change waiting for the next step): True if it was sent (the
    thread's Fitter is then released)."""
    from deltamic_core.pipeline.cells import changes_queue

    if not server.alive or not server.is_ready():
        return False
    with holder["lock"]:  # against Stop and cell changes from the main thread
        fitter = holder.get("fitter")
        if holder["stop"].is_set() or fitter is None or fitter.done or not changes_queue(holder).empty():
            return False
        state = fitter.export_state()
        server.send("job", _without_image_copy(prepared), state)
        holder["sent"] = True
        holder["handed_over_at"] = fitter.iteration
        holder.pop("fitter")
    return True


def _without_image_copy(prepared):
    """``prepared`` without its job's in-memory image: the server fits ``prepared.image`` (the
    checked float32 copy), so the user's array (e.g. uint16) is not pickled along with it."""
    import dataclasses

    job = prepared.job
    if getattr(job, "image_data", None) is None:
        return prepared
    return dataclasses.replace(prepared, job=job.replace(image_data=None))


def server_worker(make_prepared: Callable, server, holder: dict, mailbox: Mailbox, t0: float):
    """Worker body of the process path: prepare the job here, fit it in the fit server
    (``deltamic_core.pipeline.fit_server``) and relay its messages into ``mailbox``
    (:func:`_relay`). Never raises (see :func:`fit_worker`).
    """
    from deltamic_core.pipeline.fit_server import FitServerError

    try:
        prepared = _prepare(make_prepared, mailbox)
        if not server.wait_connected():
            raise FitServerError(server.failed or "the fit server is not available")
        with holder["lock"]:
            if holder["stop"].is_set():
                return
            server.send("job", _without_image_copy(prepared))
            holder["sent"] = True
        del prepared
        yield from _relay(server, holder, mailbox, t0)
    except Exception as exc:  # noqa: BLE001 - reported on the main thread when the worker ends
        _failed(exc, holder, mailbox)


def _relay(server, holder: dict, mailbox: Mailbox, t0: float):
    """Relay the fit server's messages about the job sent into ``mailbox`` until its ``end``.

    The thread only waits on the server's connection (no GIL held), so the fit never competes
    with the viewer's drawing. Reads until the server's ``end`` of the job (Stop is a message
    to the server, never ``worker.quit()``: the next job must not read this one's end). Faces
    and labels come only when they changed; the relay keeps the last ones for each Step.
    """
    from deltamic_core.pipeline.fit_server import FitServerError

    faces = labels = None
    stop_at = None
    while True:
        if not server.poll(0.1):
            if holder["stop"].is_set():
                stop_at = stop_at or time.perf_counter()
                if time.perf_counter() - stop_at > 30.0:
                    raise FitServerError("the fit server did not stop within 30 s")
            yield None
            continue
        msg = server.recv()
        kind = msg[0]
        if kind == "step":
            _, it, loss, verts, new_faces, new_labels, level, rolled_back, psf_params, seconds = msg
            if new_faces is not None:
                faces, labels = new_faces, (None if new_labels is False else new_labels)
            now = time.perf_counter()
            mailbox.post_step(Step(it, loss, verts, faces, labels, level, rolled_back, psf_params, seconds, now - t0))
        elif kind == "changed":
            _, ident, added, notes, error = msg
            change = holder["pending"].pop(ident, None)
            if change is not None:
                change.added, change.notes, change.error = added, notes, error
                change.done.set()
        elif kind == "error":
            mailbox.error = FitError(msg[1])
        elif kind == "end":
            holder["result"] = msg[1]
            return


def process_mode_default() -> bool:
    """The widget's fits run in a fit server process unless ``DELTAMIC_FIT_PROCESS=0``."""
    return os.environ.get("DELTAMIC_FIT_PROCESS", "1").strip().lower() not in ("0", "no", "false", "off")


def server_threads() -> int:
    """Torch threads of the fit server (``DELTAMIC_FIT_THREADS``, default 1: on the 2-core box
    with the viewer drawing, bench_napari at load 4.1-4.9 gave 3.6 new states/s with 1 thread vs
    2.2 with 2; the viewer's process keeps a core)."""
    try:
        return max(int(os.environ.get("DELTAMIC_FIT_THREADS", "1")), 1)
    except ValueError:
        return 1


_warm_lock = threading.Lock()
_warm_thread: threading.Thread | None = None


def _warm_up_quietly() -> None:
    from deltamic_core.pipeline import warm_up

    try:
        warm_up()
    except Exception:  # noqa: BLE001 - then the first fit pays for it (and says what fails)
        pass


def start_warm_up() -> None:
    """``pipeline.warm_up()`` in a daemon thread, once per process (the first Run then finds
    the modules imported and the kernel loaded: ~3 s less on the sample at load 19)."""
    global _warm_thread
    with _warm_lock:
        if _warm_thread is None:
            _warm_thread = threading.Thread(target=_warm_up_quietly, name="deltamic-warm-up", daemon=True)
            _warm_thread.start()


def wait_warm_up(timeout_s: float) -> None:
    """Let a running warm-up end (before the application quits)."""
    thread = _warm_thread
    if thread is not None:
        thread.join(timeout_s)


class FitRunner(QObject):
    """One fit at a time in a background thread; the callbacks run on the main thread.

    ``on_prepared(prepared, notes)`` once the worker has prepared the job; ``on_update(Delivery)``
    when new steps arrived (at most every ``interval_ms``, and only while the main thread is
    free); ``on_error(FitError)`` and then ``on_finished()`` when the worker has ended.
    """

    def __init__(
        self, on_prepared, on_update, on_error, on_finished, *, interval_ms: int = 40, use_process=None, parent=None
    ):
        super().__init__(parent)
        self.use_process = process_mode_default() if use_process is None else bool(use_process)
        self.server = None  # the fit server (deltamic_core.pipeline.fit_server.FitServer)
        self.mode: str | None = None  # "process" or "thread": where the last fit started
        self.handed_over_at: int | None = None  # the iteration after which it went to the server
        self._change_ids = itertools.count(1)
        self._on_prepared, self._on_update = on_prepared, on_update
        self._on_error, self._on_finished = on_error, on_finished
        self.worker = None
        self._holder: dict = {}
        self._mailbox = Mailbox()
        self._thread_done = threading.Event()
        self._timer = QTimer(self)
        self._timer.setInterval(int(interval_ms))
        self._timer.timeout.connect(self.deliver)
        self.started_at = 0.0
        self.last_result = None  # FitResult of the last finished fit
        self.last_timings: dict = {}
        self.last_prepared = None

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def start_server(self) -> bool:
        """Start the fit server (when the widget opens: it imports and warms up meanwhile).
        False, and fits in a thread of this process, if it cannot be started."""
        if not self.use_process:
            return False
        if self.server is not None and self.server.failed is None and self.server.process.poll() is None:
            return True
        self.close_server()
        from deltamic_core.pipeline.fit_server import FitServer, FitServerError

        try:
            self.server = FitServer(threads=server_threads()).start()
        except FitServerError as exc:
            warnings.warn(f"{exc}; fits run in the viewer's process", stacklevel=2)
            self.server = None
            return False
        return True

    def close_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()

    def post_change(self, change) -> None:
        """Hand a ``pipeline.cells.CellChange`` to the running fit (applied before its next
        step; ``change.done`` is set when it was answered)."""
        from deltamic_core.pipeline.cells import changes_queue

        holder = self._holder
        with holder.setdefault("lock", threading.Lock()):  # a thread fit may be handing itself over
            if self.mode == "process" or holder.get("sent"):
                ident = next(self._change_ids)
                holder["pending"][ident] = change
                self.server.send("change", ident, change.add_centres, change.add_radii, tuple(change.remove))
            else:
                changes_queue(holder).put(change)

    def start(self, make_prepared: Callable) -> None:
        """Run ``make_prepared()`` (-> ``pipeline.Prepared``) and then its fit: in the fit server
        when it runs, else in this process's worker thread."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            raise ValueError("a fit is already running: stop it first")
        self._mailbox = Mailbox()
        self.last_result, self.last_prepared = None, None
        self.handed_over_at = None
        self.started_at = time.perf_counter()
        server = self.server
        if server is not None and (server.failed is not None or server.process.poll() is not None):
            self.start_server()  # it died since: a new one, which warms up for the next Run
            server = self.server
        self._holder = {"stop": threading.Event(), "lock": threading.Lock(), "pending": {}}
        if server is not None and server.is_ready():
            self.mode = "process"
            args = (make_prepared, server, self._holder, self._mailbox, self.started_at)
            worker = create_worker(server_worker, *args, _start_thread=False)
        else:
            # no server, or still importing and warming up (6-10 s after the widget opened): the
            # fit starts in the thread at once, and goes over to the server when it is ready
            self.mode = "thread"
            args = (make_prepared, self._holder, self._mailbox, self.started_at)
            worker = create_worker(fit_worker, *args, server=server, _start_thread=False)
        worker.finished.connect(self._finished)
        # set from the worker thread itself, so shutdown() can wait without an event loop
        self._thread_done = threading.Event()
        worker.finished.connect(self._thread_done.set, Qt.DirectConnection)
        self.worker = worker
        worker.start()
        self._timer.start()

    def deliver(self) -> bool:
        """Hand what the worker posted to the callbacks (main thread); False if nothing was new."""
        box = self._mailbox.take()
        if box.prepared is not None:
            self.last_prepared = box.prepared
            self._on_prepared(box.prepared, box.notes)
        elif box:
            self._on_update(box)
        return bool(box)

    def _finished(self) -> None:
        self._timer.stop()
        self.worker = None
        while self.deliver():  # what was posted since the last tick, the last state included
            pass
        fitter = self._holder.get("fitter")
        self.handed_over_at = self._holder.get("handed_over_at")
        try:  # the fit's final state (as the CLI reports it); the thread has ended
            self.last_result = fitter.result() if fitter is not None else self._holder.get("result")
            if self.last_result is not None:
                elapsed = time.perf_counter() - self.started_at
                self.last_timings = {
                    "fit_s": elapsed,
                    "per_iteration_s": elapsed / max(self.last_result.iterations, 1),
                    **{f"fitter_{k}_s": float(v) for k, v in self.last_result.timings.items()},
                }
        except Exception:  # noqa: BLE001 - a report without the fit's history, not a crash
            self.last_result = None
        if self._holder.get("server_broken"):
            self.close_server()
            self.start_server()  # for the next Run
        self._holder.clear()  # release the Fitter (solver, render plan) now
        if self._mailbox.error is not None:
            self._on_error(self._mailbox.error)
        self._on_finished()

    def stop(self) -> None:
        """Stop now: the step in progress is abandoned at its next stage (the fit keeps the
        last completed step); before the first step, the fit ends without one."""
        if self.worker is None:
            return
        with self._holder["lock"]:
            self._holder["stop"].set()  # before looking for the fitter: see pipeline.fit_steps
            sent = self._holder.get("sent")
            if sent:  # the server cancels its step; the relay reads on to its end
                try:
                    self.server.send("stop")
                except Exception:  # noqa: BLE001 - the relay sees the broken server and ends
                    pass
        if sent or self.mode == "process":
            return
        fitter = self._holder.get("fitter")
        if fitter is not None:
            fitter.cancel()
        self.worker.quit()

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Stop a running fit and wait (up to ``timeout_s``) for its thread to end, processing no
        Qt events (safe inside napari's close sequence). True if no fit is running any more."""
        worker = self.worker
        if worker is None:
            self.close_server()
            return True
        try:
            self._timer.stop()
        except RuntimeError:  # deleted with the widget
            pass
        self.stop()
        if self._thread_done.wait(timeout_s):
            self.worker = None
            self._holder.clear()
            self.close_server()
            return True
        self.close_server()  # kills it if it does not quit: never an orphan
        return False
