"""napari notifications and the button-handler guard shared by the widget's parts."""

from __future__ import annotations

import contextlib
import warnings


def _show_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(f"deltaMic: {message}")


def _show_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(f"deltaMic: {message}")


@contextlib.contextmanager
def _input_warnings_shown():
    """The pipeline's warnings about the user's input (overlapping seeds shrunk, a mesh repaired,
    ...) as napari notifications, on the Create mesh and Run paths; other warnings go on as
    usual. Main thread only."""
    from deltamic_core.pipeline.errors import InputWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        yield
    for w in caught:
        if issubclass(w.category, InputWarning):
            _show_warning(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _show_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(f"deltaMic: {message}")


def _guarded(method):
    """Run a button handler; any exception becomes an error notification, never a crash."""

    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown to the user, the viewer keeps running
            _show_error(str(exc) or type(exc).__name__)
            return None

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def start_worker(owner, name: str, buttons, function, *args, on_done, what: str, **kwargs):
    """Run ``function(*args, **kwargs)`` in a napari thread worker while ``buttons`` are
    disabled; ``on_done(result)`` on the main thread, or an error notification "``what``
    failed: ...". ``owner`` keeps the worker (``owner._workers[name]``) until the next one of
    that name (a worker nobody holds can be collected while it runs). Returns the worker."""
    from napari.qt.threading import create_worker

    # errors become one notification (below), not also a traceback re-raised in the Qt loop
    worker = create_worker(function, *args, **kwargs, _start_thread=False, _ignore_errors=True)

    def enable() -> bool:
        """Re-enable the buttons; False when the widget is gone (closed while this worker ran:
        then there is nothing left to update)."""
        try:
            for b in buttons:
                b.setEnabled(True)
        except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
            return False
        return True

    def done(result):
        if enable():
            on_done(result)

    def failed(exc):
        if enable():
            _show_error(f"{what} failed: {exc}")

    worker.returned.connect(done)
    worker.errored.connect(failed)
    for b in buttons:
        b.setEnabled(False)
    owner._workers[name] = worker
    worker.start()
    return worker
