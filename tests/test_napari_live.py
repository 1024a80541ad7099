"""A running fit in a shown viewer under Xvfb, driven through the buttons: napari's progress bar
in its activity dock (its text carries the loss) appears when Run is clicked, advances with the
fit, and goes away when Stop is clicked; every Surface update is a new fit state (no unchanged
mesh re-sent); Stop abandons the step in progress and keeps the last completed one; a fit that
diverges or fails inside a step ends with one error notification and the widget idle again.
Speed numbers (time to the first update, updates per second, Stop latency, the longest stall of
the UI thread) are measured by ``benchmarks/bench_napari.py``, not asserted here."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("error:Private attribute access:FutureWarning"),
]

from qtpy.QtWidgets import QApplication, QLabel, QMainWindow, QProgressBar, QWidget  # noqa: E402

from gui_helpers import click, start_fit  # noqa: E402
from napari_deltamic._widget import INDICATOR_SPEED_PERCENT  # noqa: E402

FIT_TIMEOUT_MS = 180_000


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


def _indicator_speeds() -> list[int]:
    """Speeds (percent) of napari's animated "in progress" indicators (loading.gif movies on
    labels of the shown main window)."""
    return [
        label.movie().speed()
        for win in QApplication.topLevelWidgets()
        if isinstance(win, QMainWindow) and win.isVisible()
        for label in win.findChildren(QLabel)
        if label.movie() is not None and label.movie().fileName().endswith("loading.gif")
    ]


def _one_cell(viewer, open_widget, embryo, iterations: int = 500):
    """The widget from the Plugins menu on a crop of the sample around one cell, one seed."""
    w = open_widget(viewer)
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
    w.iter_box.setValue(iterations)
    w.levels_edit.setText("1")
    return w


class _RenderFault:
    """Replaces ``Renderer.render`` (the fit's forward model, run in the worker thread): normal
    until ``arm()``, then each call is ``fault(original, *args)``; ``entered`` is set on the
    first faulty call."""

    def __init__(self, monkeypatch, fault):
        from deltamic_core.render.renderer import Renderer

        original = Renderer.render
        self.armed = threading.Event()
        self.entered = threading.Event()

        def render(renderer, *args, **kwargs):
            if not self.armed.is_set():
                return original(renderer, *args, **kwargs)
            self.entered.set()
            return fault(lambda: original(renderer, *args, **kwargs))

        monkeypatch.setattr(Renderer, "render", render)
        # the fault is in this process: the fit must run here (test_napari_process injects its own)
        monkeypatch.setenv("DELTAMIC_FIT_PROCESS", "0")

    def arm(self) -> None:
        self.armed.set()

    def disarm(self) -> None:
        self.armed.clear()


def _idle(w) -> bool:
    return not w.is_running and w.run_button.isEnabled() and not w.stop_button.isEnabled()


@pytest.mark.slow
def test_fit_progress_and_loss_in_the_activity_dock_and_stop(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors
):
    viewer = make_napari_viewer(show=True)
    w = _one_cell(viewer, gui_open_widget, embryo)
    assert not any("deltaMic" in t for t, _ in _activity_bars())

    start_fit(qtbot, w)
    layer = viewer.layers["crop fit"]
    states = []
    layer.events.data.connect(lambda e: states.append(np.array(layer.vertices, copy=True)))
    qtbot.waitUntil(lambda: layer.metadata.get("fit_iteration", 0) >= 4, timeout=FIT_TIMEOUT_MS)
    # the activity bar follows the fit on its own timer
    qtbot.waitUntil(lambda: any("loss" in t for t, _ in _activity_bars()), timeout=FIT_TIMEOUT_MS)
    bars = [(t, v) for t, v in _activity_bars() if "deltaMic fit" in t]
    assert len(bars) == 1, _activity_bars()
    text, value = bars[0]
    assert "loss" in text and value >= 1
    assert w.activity.total == 500
    # napari's animated "in progress" indicator runs slowly while the fit runs (each of its
    # frames repaints the whole window), at its own pace again afterwards
    assert _indicator_speeds() == [INDICATOR_SPEED_PERCENT] and INDICATOR_SPEED_PERCENT < 100

    click(qtbot, w.stop_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    qtbot.waitUntil(lambda: not any("deltaMic fit" in t for t, _ in _activity_bars()), timeout=10_000)
    assert _indicator_speeds() == [100]
    # every update showed a new state of the fit: consecutive meshes all differ
    assert len(states) >= 2
    for a, b in zip(states, states[1:]):
        assert a.shape != b.shape or np.abs(a - b).max() > 0
    assert gui_errors == []


@pytest.mark.slow
def test_stop_abandons_the_step_in_progress_and_keeps_the_last_completed_one(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors, monkeypatch
):
    release = threading.Event()

    def held(render):  # the step's render waits until the test lets it go (after Stop)
        release.wait(60)
        return render()

    fault = _RenderFault(monkeypatch, held)
    viewer = make_napari_viewer(show=True)
    w = _one_cell(viewer, gui_open_widget, embryo)
    start_fit(qtbot, w)
    layer = viewer.layers["crop fit"]
    qtbot.waitUntil(lambda: layer.metadata.get("fit_iteration", 0) >= 2, timeout=FIT_TIMEOUT_MS)
    fault.arm()
    qtbot.waitUntil(fault.entered.is_set, timeout=FIT_TIMEOUT_MS)  # a step is in its render now
    w.runner.deliver()  # what the runner's timer does: every completed step is shown now
    completed = len(w.loss_plot.losses)
    assert completed >= 2 and layer.metadata["fit_iteration"] == completed
    click(qtbot, w.stop_button)
    release.set()  # the render returns; the cancelled step must not be completed
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert _idle(w)
    assert len(w.loss_plot.losses) == completed
    assert layer.metadata["fit_iteration"] == completed
    assert w.runner.last_result.mesh.metadata["fit_iterations"] == completed
    np.testing.assert_allclose(layer.vertices, w.runner.last_result.mesh.verts, atol=1e-4)
    assert f"done: {completed} iterations" in w.status_label.text()
    assert gui_errors == []


@pytest.mark.slow
def test_stop_during_a_level_change_abandons_the_membrane_rebuild_and_keeps_the_finished_level(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors, monkeypatch
):
    """Stop clicked while the fit enters its next level and rebuilds the touching cells as one
    mesh with shared membranes (seconds of work): the rebuild is abandoned at its next
    cancellation point (no patch of it is remeshed after the Stop), the fit ends with the last
    step of the finished level, shown and reported."""
    import sys

    seed_mod, remesh_mod = sys.modules["deltamic_core.geometry.seed"], sys.modules["deltamic_core.geometry.remesh"]
    nets, patch = seed_mod.surface_nets, remesh_mod._remesh_patch
    entered, stopped = threading.Event(), threading.Event()
    after_stop = []

    def held_nets(*args, **kwargs):  # the rebuild's first piece waits for the Stop click
        out = nets(*args, **kwargs)
        entered.set()
        stopped.wait(60)
        return out

    def counted_patch(*args, **kwargs):
        if stopped.is_set():
            after_stop.append(1)
        return patch(*args, **kwargs)

    monkeypatch.setattr(seed_mod, "surface_nets", held_nets)
    monkeypatch.setattr(remesh_mod, "_remesh_patch", counted_patch)
    monkeypatch.setenv("DELTAMIC_FIT_PROCESS", "0")  # the patches are in this process
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    image = viewer.add_image(embryo["image"], name="embryo", scale=tuple(embryo["spacing_um"]))
    viewer.add_points(embryo["centroids_um"], name="seeds", size=1.0)
    w.image_combo.set_layer(image)
    w.seed_combo.set_layer(viewer.layers["seeds"])
    w.radius_box.setValue(4.0)  # the three spheres overlap: the cells touch at the level change
    w.iter_box.setValue(2)
    w.levels_edit.setText("2, 1")
    start_fit(qtbot, w)
    qtbot.waitUntil(entered.is_set, timeout=FIT_TIMEOUT_MS)  # level 1 is being built
    click(qtbot, w.stop_button)
    stopped.set()
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert _idle(w)
    assert after_stop == []
    layer = viewer.layers["embryo fit"]
    res = w.runner.last_result
    assert res.iterations == 2 == layer.metadata["fit_iteration"] == len(w.loss_plot.losses)
    assert set(res.level_history) == {0}
    assert not (res.mesh.labels > 0).all(axis=1).any()  # the separate surfaces of level 0
    np.testing.assert_array_equal(layer.faces, res.mesh.faces)
    np.testing.assert_allclose(layer.vertices, res.mesh.verts, atol=1e-4)
    assert "done: 2 iterations" in w.status_label.text()
    assert gui_errors == []


def _non_finite(render):
    import torch

    return torch.full_like(render(), float("inf"))


def _allocation_fails(render):  # torch's words when an allocation fails
    raise RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
        "you tried to allocate 1073741824 bytes."
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (_non_finite, "fit failed: fit diverged: 8 consecutive steps"),
        (_allocation_fails, "not enough memory for this fit"),
    ],
    ids=["diverges", "runtime-error"],
)
def test_a_fit_failing_inside_a_step_ends_with_one_error_and_the_widget_idle(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors, monkeypatch, fault, message
):
    # both are RuntimeErrors raised inside Fitter.step in the worker thread: FitDivergedError
    # after 8 rolled-back steps (every render non-finite), and an allocation failure of torch's
    faulty = _RenderFault(monkeypatch, fault)
    viewer = make_napari_viewer(show=True)
    w = _one_cell(viewer, gui_open_widget, embryo)
    start_fit(qtbot, w)
    layer = viewer.layers["crop fit"]
    qtbot.waitUntil(lambda: layer.metadata.get("fit_iteration", 0) >= 2, timeout=FIT_TIMEOUT_MS)
    faulty.arm()
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert _idle(w)
    assert len(gui_errors) == 1 and message in gui_errors[0], gui_errors
    # the last good mesh stays, as the last step before the failure left it
    n = len(w.loss_plot.losses)
    assert n >= 2 and layer.metadata["fit_iteration"] == n
    assert np.isfinite(layer.vertices).all()
    assert message in w.status_label.text() and f"iteration {n}" in w.status_label.text()
    qtbot.waitUntil(lambda: not any("deltaMic fit" in t for t, _ in _activity_bars()), timeout=10_000)
    # and the widget runs again
    faulty.disarm()
    gui_errors.clear()
    w.iter_box.setValue(2)
    start_fit(qtbot, w)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert _idle(w) and gui_errors == [] and layer.metadata["fit_iteration"] == 2
