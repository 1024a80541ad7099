"""A running fit in napari's own activity dock, in a shown viewer under Xvfb: napari's progress
bar (its text carries the loss) appears when Run is clicked, advances with the fit, and goes
away when Stop is clicked; every Surface update is a new fit state (no unchanged mesh re-sent).
Speed numbers (time to the first update, updates per second, Stop latency) are measured by
``benchmarks/bench_napari.py``, not asserted here."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("error:Private attribute access:FutureWarning"),
]

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QApplication, QLabel, QMainWindow, QProgressBar, QWidget  # noqa: E402

from napari_deltamic import _sample_data  # noqa: E402

FIT_TIMEOUT_MS = 180_000


@pytest.fixture(scope="session")
def embryo(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_DELTAMIC_CACHE", str(tmp_path_factory.getbasetemp() / "deltamic-sample-cache"))
    try:
        yield _sample_data.synthetic_embryo()
    finally:
        mp.undo()


def _click(qtbot, button) -> None:
    assert button.isEnabled(), f"the {button.text()!r} button is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def _activity_bars() -> list[tuple[str, int]]:
    """(label text, value) of the progress bars napari's activity dock shows."""
    out = []
    for win in QApplication.topLevelWidgets():
        if not isinstance(win, QMainWindow) or not win.isVisible():
            continue
        for bar in win.findChildren(QWidget):
            if type(bar).__name__ != "QtLabeledProgressBar" or bar.parent() is None:
                continue
            texts = " ".join(lb.text() for lb in bar.findChildren(QLabel))
            values = [pb.value() for pb in bar.findChildren(QProgressBar)]
            out.append((texts, values[0] if values else -1))
    return out


@pytest.mark.slow
def test_fit_progress_and_loss_in_the_activity_dock_and_stop(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors
):
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    spacing = np.asarray(embryo["spacing_um"])
    c = embryo["centroids_um"][0]
    lo = np.maximum(np.floor((c - 5.5) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((c + 5.5) / spacing).astype(int) + 1, embryo["image"].shape)
    crop = embryo["image"][lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    image = viewer.add_image(crop, name="crop", scale=tuple(spacing), translate=tuple(lo * spacing))
    viewer.add_points(c[None], name="seeds", size=1.0)
    w.image_combo.set_layer(image)
    w.seed_combo.set_layer(viewer.layers["seeds"])
    w.radius_box.setValue(3.0)
    w.edge_box.setValue(1.5)
    w.iter_box.setValue(500)
    w.levels_edit.setText("1")
    assert not any("deltaMic" in t for t, _ in _activity_bars())

    _click(qtbot, w.run_button)
    layer = viewer.layers["crop fit"]
    states = []
    layer.events.data.connect(lambda e: states.append(np.array(layer.vertices, copy=True)))
    qtbot.waitUntil(lambda: layer.metadata.get("fit_iteration", 0) >= 4, timeout=FIT_TIMEOUT_MS)
    bars = [(t, v) for t, v in _activity_bars() if "deltaMic fit" in t]
    assert len(bars) == 1, _activity_bars()
    text, value = bars[0]
    assert "loss" in text and value >= 1
    assert w.activity.total == 500

    _click(qtbot, w.stop_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    qtbot.waitUntil(lambda: not any("deltaMic fit" in t for t, _ in _activity_bars()), timeout=10_000)
    # every update showed a new state of the fit: consecutive meshes all differ
    assert len(states) >= 2
    for a, b in zip(states, states[1:]):
        assert a.shape != b.shape or np.abs(a - b).max() > 0
    assert gui_errors == []
