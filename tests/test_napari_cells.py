"""The Cells section in a shown viewer under Xvfb, driven as a user drives it: the widget from the
Plugins menu, a fitted mesh as the fit's Surface layer, cells picked by real mouse clicks on the
3D canvas, the section's buttons clicked. Each edit is checked against independent truth (cell
counts, trimesh volumes of each cell's closed surface, the label image's values) and Undo against
the exact arrays it must restore."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("error:Private attribute access:FutureWarning"),
]

from gui_helpers import click, click_canvas_at, start_fit  # noqa: E402

TIMEOUT_MS = 60_000
IMAGE = "embryo"


def _volumes(mesh) -> dict[int, float]:
    import trimesh

    from deltamic_core.geometry import cell_surface

    out = {}
    for c in mesh.cell_ids:
        s = cell_surface(mesh, int(c))
        out[int(c)] = float(trimesh.Trimesh(s.verts, s.faces, process=False).volume)
    return out


@pytest.fixture(scope="module")
def embryo_cells(embryo):
    """The sample's cells as a fit leaves them after its membrane rebuild: one mesh with shared
    membranes (``meshes_from_labels`` of the true cells' label image)."""
    from deltamic_core.geometry import label_image, meshes_from_labels

    lab = label_image(embryo["mesh"], embryo["image"].shape, embryo["spacing_um"], (0.0, 0.0, 0.0))
    return meshes_from_labels(lab, embryo["spacing_um"], 0.6, shared=True)


def _open_fit(make_napari_viewer, gui_open_widget, qtbot, embryo, mesh):
    """``mesh`` as the fit's Surface (Create mesh from a Surface layer) and its Labels layer
    (the Labels button), over the sample image in a 3D view; returns (viewer, widget)."""
    from napari_deltamic._layers import mesh_to_layer_data

    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    viewer.add_image(embryo["image"], name=IMAGE, scale=embryo["spacing_um"], units=("um",) * 3)
    data, kwargs, _ = mesh_to_layer_data(mesh, "truth")
    truth = viewer.add_surface(data, **kwargs)
    w.seed_source.setCurrentText("Surface")
    w.seed_combo.set_layer(truth)
    click(qtbot, w.seed_button)
    assert f"{IMAGE} fit" in viewer.layers
    truth.visible = False
    click(qtbot, w.labels_button)
    qtbot.waitUntil(lambda: f"{IMAGE} cells" in viewer.layers, timeout=TIMEOUT_MS)
    viewer.dims.ndisplay = 3
    return viewer, w


def _state(viewer):
    from napari_deltamic._layers import layer_to_mesh

    return layer_to_mesh(viewer.layers[f"{IMAGE} fit"]), np.asarray(viewer.layers[f"{IMAGE} cells"].data).copy()


def _alone_on_its_line(labels, mesh, spacing) -> list[int]:
    """Cells whose centroid's z line (the default 3D line of sight) meets no other cell."""
    from deltamic_core.geometry import measure

    table = measure(mesh)
    cells = []
    for c, centroid in zip(table["cell"], np.asarray(table["centroid"], dtype=float).reshape(-1, 3)):
        y, x = (int(round(v / s)) for v, s in zip(centroid[1:], spacing[1:]))
        column = set(np.unique(labels[:, y, x]).tolist()) - {0}
        if column == {int(c)}:
            cells.append((int(c), centroid))
    return cells


def _pick(qtbot, viewer, w, layer_name, point, cell):
    viewer.layers.selection.active = viewer.layers[layer_name]
    click_canvas_at(qtbot, viewer, point)
    qtbot.waitUntil(lambda: w.cells.picked == cell, timeout=5000)


def _wait_cells(qtbot, viewer, n):
    def ready():
        mesh, labels = _state(viewer)
        features = viewer.layers[f"{IMAGE} cells"].features
        return mesh.n_cells == n and int(labels.max()) == n and len(features) == n + 1

    qtbot.waitUntil(ready, timeout=TIMEOUT_MS)


@pytest.mark.slow
def test_pick_delete_merge_split_undo_redo(
    make_napari_viewer, gui_open_widget, qtbot, gui_errors, embryo, embryo_cells
):
    viewer, w = _open_fit(make_napari_viewer, gui_open_widget, qtbot, embryo, embryo_cells)
    mesh0, labels0 = _state(viewer)
    n0 = mesh0.n_cells
    vol0 = _volumes(mesh0)
    clear = _alone_on_its_line(labels0, mesh0, embryo["spacing_um"])
    assert len(clear) >= 2, clear
    (a, pa), (b, pb) = clear[:2]

    # a click on the Surface picks the cell under it, shown opaque in its own colour
    _pick(qtbot, viewer, w, f"{IMAGE} fit", pa, a)
    high = viewer.layers["picked cell"]
    assert set(np.unique(high.vertex_values).tolist()) == {float(a)}
    assert tuple(high.contrast_limits) == tuple(viewer.layers[f"{IMAGE} fit"].contrast_limits)
    assert viewer.layers[f"{IMAGE} cells"].selected_label == a
    # a click on the Labels layer picks too
    _pick(qtbot, viewer, w, f"{IMAGE} cells", pb, b)

    # Delete: one cell fewer; the others keep their volume (their faces and vertices)
    click(qtbot, w.delete_button)
    _wait_cells(qtbot, viewer, n0 - 1)
    mesh1, labels1 = _state(viewer)
    kept = [c for c in sorted(vol0) if c != b]
    np.testing.assert_allclose(sorted(_volumes(mesh1).values()), sorted(vol0[c] for c in kept), rtol=1e-9)
    np.testing.assert_array_equal(np.unique(labels1), np.arange(n0))

    # Undo restores the exact arrays (Surface and Labels)
    click(qtbot, w.undo_button)
    qtbot.waitUntil(lambda: np.array_equal(_state(viewer)[1], labels0), timeout=TIMEOUT_MS)
    mesh, _ = _state(viewer)
    np.testing.assert_array_equal(mesh.verts, mesh0.verts)
    np.testing.assert_array_equal(mesh.faces, mesh0.faces)
    np.testing.assert_array_equal(mesh.labels, mesh0.labels)

    # Merge: the picked cell and the next one clicked become one; its volume is the sum
    _pick(qtbot, viewer, w, f"{IMAGE} fit", pa, a)
    click(qtbot, w.merge_button)
    click_canvas_at(qtbot, viewer, pb)
    _wait_cells(qtbot, viewer, n0 - 1)
    merged = _volumes(_state(viewer)[0])
    assert min(merged) == 1 and max(merged) == n0 - 1
    assert max(merged.values()) == pytest.approx(vol0[a] + vol0[b], rel=1e-5)
    click(qtbot, w.undo_button)
    _wait_cells(qtbot, viewer, n0)

    # Split: two clicks 1 um either side of the centroid along y; the halfway plane halves the cell
    _pick(qtbot, viewer, w, f"{IMAGE} fit", pa, a)
    click(qtbot, w.split_button)
    for dy in (-1.0, 1.0):
        click_canvas_at(qtbot, viewer, pa + np.array([0.0, dy, 0.0]))
    _wait_cells(qtbot, viewer, n0 + 1)
    split_mesh, split_labels = _state(viewer)
    parts = _volumes(split_mesh)
    others = [vol0[c] for c in sorted(vol0) if c != a]
    halves = [v for v in parts.values() if not np.isclose(v, others, rtol=1e-9).any()]
    assert len(halves) == 2 and sum(halves) == pytest.approx(vol0[a], rel=1e-4)
    assert min(halves) > 0.3 * vol0[a]
    # the new cell (the last id) is on the second point's side (+y)
    from deltamic_core.geometry import cell_surface

    assert cell_surface(split_mesh, n0 + 1).verts[:, 1].mean() > pa[1]

    # Undo then Redo: back to the split, exactly
    click(qtbot, w.undo_button)
    _wait_cells(qtbot, viewer, n0)
    click(qtbot, w.redo_button)
    _wait_cells(qtbot, viewer, n0 + 1)
    mesh, labels = _state(viewer)
    np.testing.assert_array_equal(mesh.verts, split_mesh.verts)
    np.testing.assert_array_equal(mesh.labels, split_mesh.labels)
    np.testing.assert_array_equal(labels, split_labels)
    assert gui_errors == []


@pytest.mark.slow
def test_refit_moves_the_picked_cell_only(make_napari_viewer, gui_open_widget, qtbot, gui_errors, embryo, embryo_cells):
    from deltamic_core.geometry import cell_surface, measure

    viewer, w = _open_fit(make_napari_viewer, gui_open_widget, qtbot, embryo, embryo_cells)
    mesh0, labels0 = _state(viewer)
    (a, pa) = _alone_on_its_line(labels0, mesh0, embryo["spacing_um"])[0]
    w.iter_box.setValue(4)
    w.levels_edit.setText("1")
    _pick(qtbot, viewer, w, f"{IMAGE} fit", pa, a)
    click(qtbot, w.refit_button)
    qtbot.waitUntil(lambda: not np.array_equal(_state(viewer)[0].verts, mesh0.verts), timeout=TIMEOUT_MS)
    mesh1, _ = _state(viewer)
    own = np.unique(cell_surface(mesh0, a, compact=False).faces)
    others = np.setdiff1d(np.arange(len(mesh0.verts)), own)
    np.testing.assert_array_equal(mesh1.verts[others], mesh0.verts[others])  # bitwise
    np.testing.assert_array_equal(mesh1.faces, mesh0.faces)
    np.testing.assert_array_equal(mesh1.labels, mesh0.labels)
    assert np.abs(mesh1.verts[own] - mesh0.verts[own]).max() > 1e-4
    # the Labels layer's features are the new mesh's measurements; the cell stays picked
    features = viewer.layers[f"{IMAGE} cells"].features.set_index("index")
    table = measure(mesh1)
    np.testing.assert_allclose(features.loc[list(table["cell"]), "volume_um3"], table["volume_um3"], rtol=1e-6)
    assert w.cells.picked == a and "refitted" in w.cell_status.text()
    click(qtbot, w.undo_button)
    qtbot.waitUntil(lambda: np.array_equal(_state(viewer)[0].verts, mesh0.verts), timeout=TIMEOUT_MS)
    assert gui_errors == []


@pytest.mark.slow
def test_seeds_added_and_removed_during_a_fit_join_and_leave_it(
    make_napari_viewer, gui_open_widget, qtbot, gui_errors, embryo
):
    from deltamic_core.geometry import measure
    from napari_deltamic._layers import layer_to_mesh

    spacing = np.asarray(embryo["spacing_um"])
    centroids = embryo["centroids_um"]
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    image = viewer.add_image(embryo["image"], name=IMAGE, scale=tuple(spacing), units=("um",) * 3)
    w.image_combo.set_layer(image)
    seeds = viewer.add_points(centroids[:2] / spacing, name="seeds", scale=tuple(spacing), units=("um",) * 3)
    click(qtbot, w.click_button)  # the seeds layer, in add mode
    w.iter_box.setValue(30)
    w.levels_edit.setText("1")
    start_fit(qtbot, w)
    assert w.is_running
    fit = viewer.layers[f"{IMAGE} fit"]
    assert layer_to_mesh(fit).n_cells == 2

    seeds.add(centroids[2] / spacing)  # what a click in add mode does
    qtbot.waitUntil(lambda: layer_to_mesh(fit).n_cells == 3, timeout=TIMEOUT_MS)
    assert w.is_running  # the fit took the new cell without restarting
    seeds.selected_data = {0}
    seeds.remove_selected()
    qtbot.waitUntil(lambda: layer_to_mesh(fit).n_cells == 2, timeout=TIMEOUT_MS)
    assert w.is_running
    qtbot.waitUntil(lambda: not w.is_running, timeout=5 * TIMEOUT_MS)

    assert w.progress.value() == w.progress.maximum() == 30  # one fit, all its iterations
    result = layer_to_mesh(fit)
    assert result.n_cells == 2
    found = np.asarray(measure(result)["centroid"], dtype=float).reshape(-1, 3)
    # the cells are those of the second seed and of the seed added during the fit
    np.testing.assert_allclose(found, centroids[1:], atol=1.5)
    assert gui_errors == []
