"""Results are napari data: the widget's Labels layer carries the measurements as ``features``
(shown in napari's own features table), the same colour per cell as the Surface layer, and every
layer the plugin makes has units of micrometres. Driven as a user does it: the sample from
File > Open Sample, the widget from the Plugins menu, the buttons clicked."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("error:Private attribute access:FutureWarning"),
]

from qtpy.QtCore import Qt  # noqa: E402

from gui_helpers import click as _click  # noqa: E402

TIMEOUT_MS = 120_000


@pytest.mark.slow
def test_labels_layer_has_measurements_as_features_and_the_surface_colours(
    make_napari_viewer, gui_open_widget, qtbot, gui_errors, sample_cache, gui_manifest
):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(gui_manifest.name, "embryo")
    image = viewer.layers["embryo (synthetic)"]
    w = gui_open_widget(viewer)
    w.image_combo.set_layer(image)
    w.seed_source.setCurrentText("Surface")
    w.seed_combo.set_layer(viewer.layers["ground truth mesh"])
    _click(qtbot, w.seed_button)
    surface = viewer.layers["embryo (synthetic) fit"]
    n_cells = 3

    _click(qtbot, w.labels_button)
    # rasterising and measuring run in a worker: the buttons are off meanwhile, the UI keeps going
    qtbot.waitUntil(lambda: "embryo (synthetic) cells" in viewer.layers, timeout=TIMEOUT_MS)
    qtbot.waitUntil(w.labels_button.isEnabled, timeout=TIMEOUT_MS)
    assert gui_errors == []
    labels = viewer.layers["embryo (synthetic) cells"]
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale)
    assert set(np.unique(labels.data)) == {0, 1, 2, 3}

    # features: one row per label value (the background first), the measurements as columns
    f = labels.features
    assert list(f["index"]) == [0, 1, 2, 3]
    for col in ("volume_um3", "area_um2", "sphericity", "centroid_z_um", "contact_area_um2", "contacts"):
        assert col in f.columns, f"no {col} in {list(f.columns)}"
    # independent truth: the volume of each cell as voxels of the rasterised label image, and
    # the voxel centroid of each label (a different route from the mesh integrals)
    voxel = float(np.prod(image.scale))
    for cell in (1, 2, 3):
        row = f[f["index"] == cell].iloc[0]
        mask = labels.data == cell
        assert row["volume_um3"] == pytest.approx(mask.sum() * voxel, rel=0.1)
        centroid = np.argwhere(mask).mean(axis=0) * np.asarray(image.scale) + np.asarray(image.translate)
        got = [row["centroid_z_um"], row["centroid_y_um"], row["centroid_x_um"]]
        np.testing.assert_allclose(got, centroid, atol=0.5)
        assert 0.5 < row["sphericity"] <= 1.0
        assert row["contact_area_um2"] > 0  # the three cells touch
    # the widget's table shows the same rows
    assert w.table.rowCount() == n_cells

    # napari's own features table widget shows them for the selected Labels layer
    _, table = viewer.window.add_plugin_dock_widget("napari", "Features table widget")
    viewer.layers.selection.active = labels
    qtbot.waitUntil(lambda: table.table.model().rowCount() == n_cells + 1, timeout=10_000)
    model = table.table.model()
    headers = [model.headerData(c, Qt.Horizontal, Qt.DisplayRole) for c in range(model.columnCount())]
    assert "volume_um3" in headers

    # the same colour per cell: the Labels colour of label i is the Surface colour of cell i
    lo, hi = surface.contrast_limits
    for cell in (1, 2, 3):
        want = surface.colormap.map(np.array([(cell - lo) / (hi - lo)]))[0]
        np.testing.assert_allclose(labels.colormap.map(cell), want, atol=1e-3)
    # and different cells get different colours
    cols = {tuple(np.round(labels.colormap.map(c), 3)) for c in (1, 2, 3)}
    assert len(cols) == 3

    # Measure (after a change of the mesh) refreshes the features too, also in a worker
    surface.data = (np.asarray(surface.vertices) * 1.0, np.asarray(surface.faces), surface.data[2])
    _click(qtbot, w.measure_button)
    qtbot.waitUntil(w.measure_button.isEnabled, timeout=TIMEOUT_MS)
    assert list(labels.features["index"]) == [0, 1, 2, 3]

    # units: every layer the plugin made is in micrometres on its (z, y, x) axes
    for layer in viewer.layers:
        assert [str(u) for u in layer.units[-3:]] == ["micrometer"] * 3, (layer.name, layer.units)
    assert gui_errors == []
