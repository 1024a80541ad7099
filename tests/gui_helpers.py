"""Helpers for the napari GUI tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import numpy as np

#: the least share of the canvas pixels inside a Surface layer's projected bounding box that
#: showing the layer (against hiding it) must change: the layer is drawn there
MIN_CHANGED = 0.02


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
    shown), or has ended (an input error)."""
    click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: w.runner.last_prepared is not None or not w.is_running, timeout=timeout_ms)


def screenshot(viewer, qtbot):
    """The canvas as the screen shows it (RGBA), after the pending draws."""
    qtbot.wait(50)
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))


def projected_box(viewer, layer, shot_shape) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the screenshot around ``layer``'s vertices as drawn: the
    vertices (those in the current slice in 2D) mapped by vispy from the layer's visual to
    the canvas (the camera's view and projection), scaled to the screenshot's pixels."""
    canvas = viewer.window._qt_viewer.canvas
    node = canvas.layer_to_visual[layer].node
    verts = np.asarray(layer.vertices, dtype=np.float64)
    displayed = list(viewer.dims.displayed)
    hidden = [a for a in range(verts.shape[1]) if a not in displayed]
    if hidden:  # napari draws the faces within half a data unit of the slice
        point = np.asarray(viewer.dims.point)[hidden]
        verts = verts[np.all(np.abs(verts[:, hidden] - point) <= 0.5, axis=1)]
    assert len(verts), "no vertex of the mesh in the view"
    mapped = node.get_transform("visual", "canvas").map(verts[:, displayed][:, ::-1])
    xy = mapped[:, :2] / mapped[:, 3:4]
    width, height = canvas._scene_canvas.size
    sx, sy = shot_shape[1] / width, shot_shape[0] / height
    col0, col1 = np.floor(xy[:, 0].min() * sx), np.ceil(xy[:, 0].max() * sx) + 1
    row0, row1 = np.floor(xy[:, 1].min() * sy), np.ceil(xy[:, 1].max() * sy) + 1
    clip = lambda v, n: int(min(max(v, 0), n))
    return clip(row0, shot_shape[0]), clip(row1, shot_shape[0]), clip(col0, shot_shape[1]), clip(col1, shot_shape[1])


def surface_contrast(viewer, layer, qtbot, out_dir, state: str) -> dict:
    """Screenshots with ``layer`` shown and hidden (saved as PNG in ``out_dir``); the fraction
    of changed pixels inside its projected box, and the share of all changes inside it."""
    import imageio.v3 as iio

    layer.visible = True
    shown = screenshot(viewer, qtbot)
    box = projected_box(viewer, layer, shown.shape)
    layer.visible = False
    hidden = screenshot(viewer, qtbot)
    layer.visible = True
    assert shown.shape == hidden.shape
    for name, shot in (("shown", shown), ("hidden", hidden)):
        path = out_dir / f"{state}_surface_{name}.png"
        iio.imwrite(path, shot)
        np.testing.assert_array_equal(iio.imread(path), shot)  # the saved picture is the screenshot
    changed = np.any(shown[..., :3] != hidden[..., :3], axis=-1)
    r0, r1, c0, c1 = box
    inside = changed[r0:r1, c0:c1]
    return {
        "box": box,
        "fraction_in_box": float(inside.mean()) if inside.size else 0.0,
        "share_inside": float(inside.sum()) / max(int(changed.sum()), 1),
        "changed": int(changed.sum()),
    }
