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

from gui_helpers import MIN_CHANGED, click, screenshot, surface_contrast  # noqa: E402
from napari_deltamic import _sample_data  # noqa: E402

FIT_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def embryo(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_DELTAMIC_CACHE", str(tmp_path_factory.getbasetemp() / "deltamic-sample-cache"))
    try:
        yield _sample_data.synthetic_embryo()
    finally:
        mp.undo()


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
    screenshot(viewer, qtbot)  # the canvas takes its final size once drawn

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
