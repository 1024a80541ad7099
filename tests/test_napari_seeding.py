"""Click to seed, in a shown viewer under Xvfb, the way a user does it: the sample from
File > Open Sample, the widget from the Plugins menu, "Click to seed", then mouse clicks on the
canvas (real Qt mouse events through vispy and napari's add mode), moving and deleting points.
Each seed's radius must be the pipeline's estimate for the same seeds (what ``deltamic fit
--seeds`` computes) and near the true cell's size; the seed rules and their messages are the
pipeline's; the initial mesh follows every change."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("error:Private attribute access:FutureWarning"),
]

from qtpy.QtWidgets import QApplication  # noqa: E402

from gui_helpers import click as _click  # noqa: E402
from gui_helpers import click_canvas_at as _click_canvas_at  # noqa: E402

TIMEOUT_MS = 60_000


def _cell_centres(mesh) -> dict[int, np.ndarray]:
    """Mean vertex of each cell of a seed mesh (each sphere's own faces)."""
    out = {}
    for cell in np.unique(mesh.labels[mesh.labels > 0]):
        faces = mesh.faces[(mesh.labels == cell).any(axis=1)]
        out[int(cell)] = mesh.verts[np.unique(faces)].mean(axis=0)
    return out


@pytest.mark.slow
def test_click_to_seed_estimates_radii_follows_moves_and_deletes(
    make_napari_viewer, gui_open_widget, qtbot, gui_errors, sample_cache, gui_manifest
):
    from deltamic_core.geometry import measure
    from deltamic_core.pipeline import InitSpec, initial_mesh, psf_width_um
    from napari_deltamic._layers import layer_to_mesh

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(gui_manifest.name, "embryo")
    image = viewer.layers["embryo (synthetic)"]
    truth = measure(layer_to_mesh(viewer.layers["ground truth mesh"]))
    centroids = np.asarray(truth["centroid"], dtype=float).reshape(-1, 3)
    true_radii = (3.0 * np.asarray(truth["volume_um3"], dtype=float) / (4.0 * np.pi)) ** (1.0 / 3.0)
    viewer.layers.remove("ground truth mesh")
    viewer.layers.remove("seeds")  # the sample's own seeds: the user starts from nothing
    w = gui_open_widget(viewer)
    w.image_combo.set_layer(image)

    _click(qtbot, w.click_button)
    assert "seeds" in viewer.layers
    seeds = viewer.layers["seeds"]
    assert seeds.mode == "add" and viewer.layers.selection.active is seeds
    assert w.seed_source.currentText() == "Points" and w.seed_combo.layer() == seeds
    np.testing.assert_allclose(seeds.scale, image.scale)

    for k, c in enumerate(centroids):
        _click_canvas_at(qtbot, viewer, c)
        qtbot.waitUntil(lambda k=k: len(seeds.data) == k + 1, timeout=TIMEOUT_MS)
    fit_name = "embryo (synthetic) fit"
    qtbot.waitUntil(lambda: fit_name in viewer.layers, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: "3 seed(s)" in w.seed_status.text(), timeout=TIMEOUT_MS)
    centres = np.asarray(seeds.data) * np.asarray(seeds.scale) + np.asarray(seeds.translate)
    # the clicks landed where they were made (to the z slice and half a pixel)
    assert np.abs(centres - centroids).max(axis=0) == pytest.approx([0.0, 0.0, 0.0], abs=0.61)
    radii = np.asarray(seeds.features["radius_um"], dtype=float)
    # the pipeline's estimate of the same seeds (what `deltamic fit --seeds` without radii does)
    spacing, origin = np.asarray(image.scale), np.asarray(image.translate)
    from deltamic_core.pipeline import estimate_seed_radii

    want = estimate_seed_radii(image.data, spacing, centres - origin, blur_um=psf_width_um(w.make_psf()))
    np.testing.assert_allclose(radii, want, rtol=1e-12)
    # and near the true cells' size: inside each cell, not past its equivalent radius
    assert np.all(radii > 0.5 * true_radii) and np.all(radii < 1.05 * true_radii), (radii, true_radii)
    preview = layer_to_mesh(viewer.layers[fit_name])
    assert preview.n_cells == 3
    same = initial_mesh(InitSpec("seeds", data=(centres, None)), image.data, spacing, psf=w.make_psf())
    np.testing.assert_allclose(preview.verts, same.verts, atol=1e-5)
    assert "3 seed(s)" in w.seed_status.text()

    # a click right next to a seed is refused by the seed rules, with the reason in the widget
    _click_canvas_at(qtbot, viewer, centroids[0] + np.array([0.0, 0.25, 0.0]))
    qtbot.waitUntil(lambda: "refused" in w.seed_status.text(), timeout=TIMEOUT_MS)
    assert len(seeds.data) == 3
    assert "smaller than a voxel" in w.seed_status.text()

    # moving a point (as a drag does: the data changes in place) moves its sphere
    before = _cell_centres(layer_to_mesh(viewer.layers[fit_name]))
    n_est = w.seeder.radii.n_estimated
    moved = np.asarray(seeds.data).copy()
    shift_um = np.array([0.0, 0.0, 0.75])
    moved[2] += shift_um / np.asarray(seeds.scale)
    seeds.data = moved
    qtbot.waitUntil(
        lambda: np.abs(_cell_centres(layer_to_mesh(viewer.layers[fit_name]))[3] - before[3] - shift_um).max() < 0.2,
        timeout=TIMEOUT_MS,
    )
    after = _cell_centres(layer_to_mesh(viewer.layers[fit_name]))
    for cell in (1, 2):
        np.testing.assert_allclose(after[cell], before[cell], atol=1e-6)
    # only the seeds whose neighbourhood changed were re-estimated (seed 3 and its nearest)
    assert 1 <= w.seeder.radii.n_estimated - n_est <= 3

    # deleting a point (select it, then the layer's delete) removes its cell
    seeds.selected_data = {1}
    seeds.remove_selected()
    qtbot.waitUntil(lambda: layer_to_mesh(viewer.layers[fit_name]).n_cells == 2, timeout=TIMEOUT_MS)
    assert "2 seed(s)" in w.seed_status.text()

    # a fixed radius large enough to overlap: the spheres are shrunk until they touch, said so
    w.radius_box.setValue(6.0)
    qtbot.waitUntil(lambda: "shrunk" in w.seed_status.text(), timeout=TIMEOUT_MS)
    mesh = layer_to_mesh(viewer.layers[fit_name])
    assert mesh.n_cells == 2
    assert gui_errors == []


def test_auto_seeds_for_interior_stains_and_their_command(make_napari_viewer, gui_open_widget, qtbot, gui_errors):
    """Two filled, blurred balls (made here with scipy, not by the core): the stain selector
    on 'interior' and the seed source 'Auto' give one seed sphere per ball, near its centre;
    with a membrane stain the widget says why not; Copy as command has --auto-seeds."""
    import shlex

    from scipy.ndimage import gaussian_filter

    from napari_deltamic._layers import layer_to_mesh

    spacing = np.array([0.5, 0.25, 0.25])
    shape = (24, 64, 64)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    centres = np.array([[6.0, 5.0, 5.0], [6.0, 11.0, 10.5]])
    img = np.zeros(shape)
    for c in centres:
        img += ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 2.5**2).astype(float)
    img = gaussian_filter(img, 1.0) * 100 + np.random.default_rng(0).poisson(3.0, shape)
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    viewer.add_image(img.astype(np.float32), name="nuclei", scale=tuple(spacing))

    def shown_default_is_what_runs():
        cfg = w.fit_config()  # what the time-lapse and the cell refits run
        runs = " / ".join(str(cfg.iterations_for_level(i)) for i in range(len(cfg.levels)))
        return w.iter_box.value() == 0 and w.iter_box.specialValueText() == f"default ({runs})"

    assert shown_default_is_what_runs()  # membrane
    w.seed_source.setCurrentText("Auto (bright objects)")
    assert not w.seed_combo.isEnabled()
    _click(qtbot, w.seed_button)
    assert len(gui_errors) == 1 and "interior" in gui_errors[0]  # a membrane stain: said, no mesh
    assert "nuclei fit" not in viewer.layers
    w.stain_combo.setCurrentText("interior")
    assert shown_default_is_what_runs()  # interior stains have their own counts
    assert w.fit_config().membrane_weight == 0 and w.fit_config().volume_weight == 1  # a filled-object model
    _click(qtbot, w.seed_button)
    mesh = layer_to_mesh(viewer.layers["nuclei fit"])
    assert mesh.n_cells == 2
    found = np.array(sorted(_cell_centres(mesh).values(), key=lambda c: c[1]))
    np.testing.assert_allclose(found, centres, atol=0.6)
    _click(qtbot, w.copy_button)
    words = shlex.split(QApplication.clipboard().text())
    assert "--auto-seeds" in words and words[words.index("--stain") + 1] == "interior"
    assert len(gui_errors) == 1
