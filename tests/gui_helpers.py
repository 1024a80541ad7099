"""Helpers for the napari GUI tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import numpy as np


def click(qtbot, button) -> None:
    """A left click on ``button``, as the user does it (it must be enabled)."""
    from qtpy.QtCore import Qt

    assert button.isEnabled(), f"the {button.text()!r} button is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def canvas_of(viewer):
    """The viewer's vispy canvas widget, found as a Qt child of the (one shown) main window."""
    from qtpy.QtWidgets import QApplication, QMainWindow, QWidget

    windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMainWindow) and w.isVisible()]
    canvases = [c for w in windows for c in w.findChildren(QWidget) if type(c).__name__ == "CanvasBackendDesktop"]
    assert len(canvases) == 1, canvases
    return canvases[0]


def click_canvas_at(qtbot, viewer, zyx_um) -> None:
    """A left click on the canvas centre with world point ``zyx_um`` under it: in 2D the z slice
    is chosen with the dims slider and the view panned to (y, x); in 3D the camera centred on the
    point (the line of sight through the click passes through it)."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtWidgets import QApplication

    if viewer.dims.ndisplay == 3:
        viewer.camera.center = tuple(float(v) for v in zyx_um)
    else:
        viewer.dims.set_point(0, float(zyx_um[0]))
        viewer.camera.center = (float(zyx_um[1]), float(zyx_um[2]))
    canvas = canvas_of(viewer)
    QApplication.processEvents()
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    qtbot.mouseMove(canvas, centre)
    qtbot.mouseClick(canvas, Qt.LeftButton, pos=centre)


def sphere_stack(tmp_path):
    """A TIFF of one noisy membrane sphere (r = 2.5 um) and a seeds CSV 0.4 um off its centre."""
    from deltamic_core.geometry import seed_spheres
    from deltamic_core.io import write_tiff
    from deltamic_core.pipeline import render_mesh_image
    from deltamic_core.psf import GaussianPSF

    spacing, shape = (0.5, 0.25, 0.25), (16, 32, 32)
    centre = (np.asarray(shape) - 1) * spacing / 2
    truth = seed_spheres(centre[None], np.array([2.5]))
    img = render_mesh_image(
        truth, shape, spacing, GaussianPSF(sigma_um=spacing), noise="poisson", photons=50.0, background=2.0, seed=3
    )
    path = tmp_path / "sphere.tif"
    write_tiff(path, img, spacing)
    seed = centre + np.array([0.0, 0.4, -0.3])
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("z,y,x\n" + ",".join(f"{v:.6f}" for v in seed) + "\n")
    return path, seeds, seed


def start_fit(qtbot, w, timeout_ms: int = 180_000) -> None:
    """Click Run and wait until the fit's worker has prepared the job (the initial mesh is
    shown and the progress bar leaves its busy state), or has ended (an input error)."""
    click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: w.progress.maximum() > 0 or not w.is_running, timeout=timeout_ms)
