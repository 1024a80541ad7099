"""What the viewer shows, checked on its screenshots (shown viewer under Xvfb, the widget from the
Plugins menu, the buttons clicked): in each state of a fit (seeded, fitting, fitted) the fit's
Surface layer changes at least 2% of the canvas pixels inside the mesh's bounding box as the
camera projects it (vispy's own scene transform of the layer's visual), shown against hidden;
the pixels that change lie inside that box; 2D and 3D display both draw the mesh."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui]

from gui_helpers import click  # noqa: E402
from napari_deltamic import _sample_data  # noqa: E402

FIT_TIMEOUT_MS = 180_000
MIN_CHANGED = 0.02  # of the canvas pixels inside the projected bounding box


@pytest.fixture(scope="module")
def embryo(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_DELTAMIC_CACHE", str(tmp_path_factory.getbasetemp() / "deltamic-sample-cache"))
    try:
        yield _sample_data.synthetic_embryo()
    finally:
        mp.undo()


def _screenshot(viewer, qtbot):
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
    shown = _screenshot(viewer, qtbot)
    box = projected_box(viewer, layer, shown.shape)
    layer.visible = False
    hidden = _screenshot(viewer, qtbot)
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


@pytest.mark.slow
def test_screenshots_of_seeded_fitting_and_fitted_show_the_mesh(
    make_napari_viewer, gui_open_widget, qtbot, embryo, tmp_path, gui_errors
):
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    spacing = np.asarray(embryo["spacing_um"])
    c = embryo["centroids_um"][0]
    lo = np.maximum(np.floor((c - 5.5) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((c + 5.5) / spacing).astype(int) + 1, embryo["image"].shape)
    crop = embryo["image"][lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    image = viewer.add_image(crop, name="crop", scale=tuple(spacing), translate=tuple(lo * spacing))
    seeds = viewer.add_points(c[None], name="seeds", size=1.0)
    w.image_combo.set_layer(image)
    w.seed_combo.set_layer(seeds)
    w.radius_box.setValue(3.0)
    w.edge_box.setValue(1.5)
    w.iter_box.setValue(500)
    w.levels_edit.setText("1")
    seeds.visible = False
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.scene.camera.angles = (-20.0, 30.0, 120.0)
    _screenshot(viewer, qtbot)  # the canvas takes its final size once drawn

    results = {}
    click(qtbot, w.seed_button)  # Create mesh
    layer = viewer.layers["crop fit"]
    results["seeded"] = surface_contrast(viewer, layer, qtbot, tmp_path, "seeded")

    click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: layer.metadata.get("fit_iteration", 0) >= 2, timeout=FIT_TIMEOUT_MS)
    assert w.is_running
    results["fitting"] = surface_contrast(viewer, layer, qtbot, tmp_path, "fitting")

    click(qtbot, w.stop_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    results["fitted"] = surface_contrast(viewer, layer, qtbot, tmp_path, "fitted")
    assert gui_errors == []
    for state, r in results.items():
        assert r["fraction_in_box"] >= MIN_CHANGED, (state, r)
        assert r["share_inside"] >= 0.95, (state, r)  # the box is where the mesh is drawn
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        f"{s}_surface_{v}.png" for s in results for v in ("shown", "hidden")
    )

    # 2D display: napari draws the faces lying within half a um of the slice (none at the
    # equator of a cell, whose faces there are steep; the Labels layer shows the cell there),
    # so the slice is taken through the flat top of the cell
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, float(layer.vertices[:, 0].max()) - 0.25)
    viewer.reset_view()
    flat = surface_contrast(viewer, layer, qtbot, tmp_path, "fitted_2d")
    assert flat["changed"] > 0 and flat["share_inside"] >= 0.95, flat
    # and back to 3D
    viewer.dims.ndisplay = 3
    again = surface_contrast(viewer, layer, qtbot, tmp_path, "fitted_3d_again")
    assert again["fraction_in_box"] >= MIN_CHANGED, again
