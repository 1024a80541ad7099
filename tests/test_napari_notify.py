"""_notify.start_worker: a button worker that ends after its widget was closed."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from napari_deltamic import _notify


@pytest.mark.gui
def test_worker_ending_after_its_buttons_were_deleted_does_nothing(qtbot):
    # A Cells action's worker can return after the viewer (and the dock's buttons) are gone;
    # it used to re-enable the deleted buttons and raise in the Qt loop (pytest-qt fails the
    # test on any exception caught there).
    from qtpy.QtWidgets import QPushButton

    button = QPushButton("Refit cell")
    release, results = threading.Event(), []
    owner = SimpleNamespace(_workers={})
    worker = _notify.start_worker(
        owner, "refit", [button], lambda: release.wait(30) or "done", on_done=results.append, what="Refit"
    )
    assert not button.isEnabled()
    button.deleteLater()
    qtbot.waitUntil(lambda: _deleted(button), timeout=5000)
    with qtbot.waitSignal(worker.finished, timeout=30000):
        release.set()
    assert results == []


def _deleted(widget) -> bool:
    try:
        widget.objectName()
    except RuntimeError:
        return True
    return False
