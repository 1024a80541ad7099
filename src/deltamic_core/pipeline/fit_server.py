"""A fit in a separate process, steered from a front end: states out, Stop and cell changes in.

An interactive front end (the napari widget) draws on its main thread while a fit steps; in
one process the two share the GIL, and the drawing slows the fit several-fold. :class:`FitServer`
runs the fits in a child Python started fresh (``python -m deltamic_core.pipeline.fit_server``,
spawn semantics: nothing is forked, so it is safe with Qt and on macOS, and the front end's
``__main__`` is not re-imported in the child, as ``multiprocessing``'s spawn would do with an
unguarded user script). The child imports the core, loads the kernel and runs
:func:`~deltamic_core.pipeline.run.warm_up` before it says it is ready, then fits one
:class:`~deltamic_core.pipeline.run.Prepared` job at a time.

Messages are pickled tuples over a ``multiprocessing.connection`` pair (plain numpy, no torch
tensors). Child -> parent: ``("ready",)``; per step ``("step", iteration, loss, verts, faces,
labels, level, rolled_back, psf_params, seconds)`` with ``faces``/``labels`` None when unchanged
since the last step sent; ``("changed", id, added, notes, error)`` for a cell change applied;
``("error", exception)``; ``("end", FitResult or None)`` once per job. Parent -> child:
``("job", prepared)`` or ``("job", prepared, state)`` (``Fitter.export_state()`` of a fit of
that job begun elsewhere, which the server continues), ``("stop",)`` (cancels the step in progress), ``("change", id, centres,
radii, remove)``, ``("quit",)``. The child exits when its connection closes (its parent
gone): no orphan.

This module imports no front end (Qt, napari); its top level imports the standard library only.
"""

from __future__ import annotations

import os
import pickle
import queue
import secrets
import subprocess
import sys
import threading
from multiprocessing.connection import Client, Listener

_MODULE = "deltamic_core.pipeline.fit_server"


def _dumps(msg) -> bytes:
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


class FitServerError(Exception):
    """The fit server could not start, or stopped unexpectedly (not a RuntimeError, see the
    napari runner: superqt drops RuntimeErrors raised out of a generator worker)."""


class FitServer:
    """The parent's end: start the child, send jobs and requests, receive its messages.

    ``threads``: ``torch.set_num_threads`` in the child. :meth:`start` returns at once; the
    child connects and warms up in the background (:attr:`ready` is set when it has).
    Sending is thread-safe; receive (:meth:`poll`, :meth:`recv`) from one thread only.
    """

    def __init__(self, threads: int = 2, *, connect_timeout_s: float = 60.0):
        self.threads = int(threads)
        self.connect_timeout_s = float(connect_timeout_s)
        self.process: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.failed: str | None = None  # why the server could not start
        self._conn = None
        self._connected = threading.Event()
        self._send_lock = threading.Lock()
        self._ready_lock = threading.Lock()
        self._listener = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> FitServer:
        """Start the child process (raises :class:`FitServerError` if it cannot be started)."""
        authkey = secrets.token_bytes(32)
        try:
            self._listener = Listener(authkey=authkey)
            env = dict(os.environ)
            env["DELTAMIC_FIT_SERVER_KEY"] = authkey.hex()
            self.process = subprocess.Popen(
                [sys.executable, "-m", _MODULE, str(self._listener.address), str(self.threads)],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except Exception as exc:  # noqa: BLE001 - said as one error
            self.close()
            raise FitServerError(f"the fit server could not be started: {exc}") from None
        threading.Thread(target=self._accept, name="deltamic-fit-server-accept", daemon=True).start()
        return self

    def _accept(self) -> None:
        try:
            conn = self._listener.accept()
            msg = pickle.loads(conn.recv_bytes())
            if msg != ("hello",):
                raise FitServerError(f"unexpected first message {msg!r}")
            self._conn = conn
            self._connected.set()
        except Exception as exc:  # noqa: BLE001 - the front end falls back
            self.failed = f"the fit server did not connect: {exc}"
            self._connected.set()

    def wait_connected(self, timeout_s: float | None = None) -> bool:
        """Wait for the child's connection; False if it failed or did not come in time."""
        timeout_s = self.connect_timeout_s if timeout_s is None else timeout_s
        if not self._connected.wait(timeout_s):
            self.failed = self.failed or f"the fit server did not connect within {timeout_s:g} s"
            return False
        return self._conn is not None and self.failed is None

    def is_ready(self) -> bool:
        """True once the child has said it is warmed up. Never blocks: reads that message when
        it is waiting (call it only while no job runs, the receiving thread's rule)."""
        if self.ready.is_set():
            return True
        if self._conn is None or self.failed is not None:
            return False
        try:
            with self._ready_lock:  # (the widget's thread fit asks too, to hand itself over)
                while not self.ready.is_set() and self._conn.poll(0):
                    self.recv()  # before the first job the child sends nothing but "ready"
        except (OSError, EOFError, FitServerError):
            return False
        return self.ready.is_set()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self.failed is None

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask the child to quit, wait for it (then kill it); idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                with self._send_lock:
                    conn.send_bytes(_dumps(("quit",)))
            except Exception:  # noqa: BLE001 - the child may be gone already
                pass
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if conn is not None:
            conn.close()
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:  # noqa: BLE001
                pass
            self._listener = None
        if not self._connected.is_set():
            self.failed = self.failed or "closed"
            self._connected.set()

    # ------------------------------------------------------------------ messages
    def send(self, *msg) -> None:
        if self._conn is None:
            raise FitServerError(self.failed or "the fit server is not connected")
        data = _dumps(msg)
        try:
            with self._send_lock:
                self._conn.send_bytes(data)
        except (OSError, EOFError) as exc:
            raise FitServerError(f"the fit server stopped unexpectedly ({exc})") from None

    def poll(self, timeout_s: float) -> bool:
        """True if a message is waiting (or the connection broke: :meth:`recv` then raises)."""
        conn = self._conn
        if conn is None:
            return True
        try:
            return conn.poll(timeout_s)
        except (OSError, EOFError):
            return True

    def recv(self):
        conn = self._conn
        if conn is None:
            raise FitServerError(self.failed or "the fit server is not connected")
        try:
            msg = pickle.loads(conn.recv_bytes())
        except (OSError, EOFError) as exc:
            raise FitServerError(f"the fit server stopped unexpectedly ({type(exc).__name__})") from None
        if msg[0] == "ready":
            self.ready.set()
        return msg


# ---------------------------------------------------------------------------- the child
class _Child:
    def __init__(self, conn):
        self.conn = conn
        self.send_lock = threading.Lock()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.holder: dict = {}
        self.holder_lock = threading.Lock()

    def send(self, *msg) -> None:
        data = _dumps(msg)
        with self.send_lock:
            self.conn.send_bytes(data)

    def listen(self) -> None:
        """Control messages, on their own thread: Stop and cell changes reach a running step."""
        from .cells import CellChange, changes_queue

        try:
            while True:
                msg = pickle.loads(self.conn.recv_bytes())
                kind = msg[0]
                if kind == "job":
                    self.jobs.put(msg[1:])
                elif kind == "stop":
                    with self.holder_lock:
                        holder = self.holder
                        stop = holder.get("stop")
                        if stop is not None:
                            stop.set()
                        fitter = holder.get("fitter")
                        if fitter is not None:
                            fitter.cancel()
                elif kind == "change":
                    _, ident, centres, radii, remove = msg
                    change = CellChange(add_centres=centres, add_radii=radii, remove=tuple(remove))
                    with self.holder_lock:
                        changes_queue(self.holder).put(change)
                    threading.Thread(target=self._answer, args=(ident, change), daemon=True).start()
                elif kind == "quit":
                    break
        except (OSError, EOFError):  # the parent is gone
            pass
        with self.holder_lock:  # end a running fit now, then the process
            stop, fitter = self.holder.get("stop"), self.holder.get("fitter")
            if stop is not None:
                stop.set()
            if fitter is not None:
                fitter.cancel()
        self.jobs.put(None)

    def _answer(self, ident, change) -> None:
        while not change.done.wait(0.5):
            if self.holder.get("changes") is None:  # that fit ended: nothing applied
                return
        try:
            self.send("changed", ident, list(change.added), list(change.notes), change.error)
        except (OSError, EOFError):
            pass

    def run_job(self, prepared, state=None) -> None:
        import time

        import numpy as np

        from ..fit import FitCancelled
        from .run import fit_steps

        with self.holder_lock:  # changes sent with the job may be waiting in the old holder
            self.holder = {"stop": threading.Event(), "changes": self.holder.get("changes") or queue.SimpleQueue()}
            holder = self.holder
        result = None
        try:
            last_faces = last_labels = None
            t_prev = time.perf_counter()
            for res in fit_steps(prepared, holder, state):
                now = time.perf_counter()
                faces = np.asarray(res.faces, dtype=np.int64)
                labels = None if res.labels is None else np.asarray(res.labels, dtype=np.int32)
                same = last_faces is not None and np.array_equal(faces, last_faces)
                same = same and (labels is None) == (last_labels is None)
                same = same and (labels is None or np.array_equal(labels, last_labels))
                self.send(
                    "step",
                    int(res.iteration),
                    float(res.loss),
                    np.asarray(res.verts, dtype=np.float64),
                    None if same else faces,
                    None if same else (labels if labels is not None else False),
                    int(res.level),
                    bool(res.rolled_back),
                    dict(res.psf_params),
                    now - t_prev,
                )
                last_faces, last_labels = faces, labels
                del res
                t_prev = time.perf_counter()
        except FitCancelled:
            pass
        except (OSError, EOFError):
            return
        except Exception as exc:  # noqa: BLE001 - sent to the front end, which says it once
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001
                exc = FitServerError(f"{type(exc).__name__}: {exc}")
            self.send("error", exc)
        fitter = holder.get("fitter")
        if fitter is not None:
            try:
                result = fitter.result()
            except Exception:  # noqa: BLE001 - a report without the fit's history
                result = None
        with self.holder_lock:
            self.holder = {}
        holder.clear()
        self.send("end", result)


def _serve(address: str, threads: int) -> None:
    key = bytes.fromhex(os.environ.pop("DELTAMIC_FIT_SERVER_KEY"))
    conn = Client(address, authkey=key)
    conn.send_bytes(_dumps(("hello",)))
    import torch

    torch.set_num_threads(max(int(threads), 1))
    from .run import warm_up

    try:
        warm_up()
    except Exception:  # noqa: BLE001 - the first fit then pays (and says what fails)
        pass
    child = _Child(conn)
    child.send("ready")
    threading.Thread(target=child.listen, name="deltamic-fit-server-listen", daemon=True).start()
    while True:
        job = child.jobs.get()
        if job is None:
            break
        try:
            child.run_job(*job)
        except (OSError, EOFError):
            break
    conn.close()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
