"""The deltaMic dock widget in a real (shown) napari viewer under Xvfb: a short real fit on the
cropped sample embryo through the thread worker, Stop, close, results, and error reporting."""
from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_deltamic import _sample_data  # noqa: E402
from napari_deltamic._widget import DeltaMicWidget  # noqa: E402

FIT_TIMEOUT_MS = 180_000


@pytest.fixture(scope="session")
def embryo(tmp_path_factory):
    """The sample embryo, rendered once per session into a private cache dir."""
    mp = pytest.MonkeyPatch()
    # shared with test_napari_sample.py: the stack is rendered once per test session
    mp.setenv("NAPARI_DELTAMIC_CACHE", str(tmp_path_factory.getbasetemp() / "deltamic-sample-cache"))
    try:
        yield _sample_data.synthetic_embryo()
    finally:
        mp.undo()


@pytest.fixture
def errors(monkeypatch):
    """Collect the error notifications the widget shows (instead of popping them up)."""
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(str(msg)))
    return shown


def _crop_one_cell(embryo, cell: int = 0, half_um: float = 5.5):
    """A crop of the embryo stack around one cell's centroid; returns (crop, origin_um, centroid_um)."""
    spacing = np.asarray(embryo["spacing_um"])
    c = embryo["centroids_um"][cell]
    lo = np.maximum(np.floor((c - half_um) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((c + half_um) / spacing).astype(int) + 1, embryo["image"].shape)
    crop = embryo["image"][lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return crop, lo * spacing, c


def _setup(viewer, embryo, iterations: int):
    crop, origin, centroid = _crop_one_cell(embryo)
    spacing = embryo["spacing_um"]
    image = viewer.add_image(crop, name="crop", scale=spacing, translate=tuple(origin))
    viewer.add_points(centroid[None], name="seeds", size=1.0)
    w = DeltaMicWidget(viewer)
    viewer.window.add_dock_widget(w, name="deltaMic")
    w.image_combo.set_layer(image)
    w.seed_source.setCurrentText("Points")
    w.seed_combo.set_layer(viewer.layers["seeds"])
    # the cell's equivalent radius is ~4.1 um: a seed of 3 um overlaps its membrane's blur
    w.radius_box.setValue(3.0)
    w.edge_box.setValue(1.5)  # ~100 triangles: keeps the test's iterations cheap
    w.psf_panel.set_sigma(embryo["params"]["sigma_um"])
    w.iter_box.setValue(iterations)
    w.levels_edit.setText("1")
    w.update_interval_s = 0.0  # update the layer after every iteration in the test
    return w, image


@pytest.mark.slow
def test_short_fit_updates_surface_and_lowers_loss(make_napari_viewer, qtbot, embryo, errors, tmp_path):
    viewer = make_napari_viewer(show=True)
    w, image = _setup(viewer, embryo, iterations=4)
    w.run_button.click()
    assert w.is_running and not w.run_button.isEnabled()
    layer = viewer.layers["crop fit"]
    v0 = np.array(layer.vertices, copy=True)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert errors == []
    losses = w.loss_plot.values()
    assert len(losses) == 4
    assert np.all(np.diff(losses) < 0)
    v1 = np.asarray(layer.vertices)
    assert v1.shape == v0.shape and np.isfinite(v1).all()
    assert np.abs(v1 - v0).max() > 1e-3  # the surface moved (um)
    assert layer.metadata["fit_iteration"] == 4
    assert w.first_update_s is not None and w.run_button.isEnabled()

    # results: mesh export, instance labels on the image grid, measurements table and CSV
    out = w.export_mesh(tmp_path / "fit.rec")
    from deltamic_core.io import read_mesh

    back = read_mesh(out)
    np.testing.assert_allclose(back.verts, v1, atol=1e-4)
    labels_layer = w.make_labels()
    assert labels_layer.data.shape == image.data.shape
    np.testing.assert_allclose(labels_layer.scale, image.scale)
    np.testing.assert_allclose(labels_layer.translate, image.translate)
    assert set(np.unique(labels_layer.data)) == {0, 1}
    rows = w.measure()
    assert len(rows) == 1 and w.table.rowCount() == 1
    csv_path = w.save_csv(tmp_path / "cells.csv")
    with open(csv_path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == 1 and float(read[0]["volume_um3"]) > 0
    assert errors == []


@pytest.mark.slow
def test_stop_mid_run_keeps_last_good_mesh(make_napari_viewer, qtbot, embryo, errors):
    viewer = make_napari_viewer(show=True)
    w, _ = _setup(viewer, embryo, iterations=500)
    w.run_button.click()
    qtbot.waitUntil(lambda: len(w.loss_plot.losses) >= 2, timeout=FIT_TIMEOUT_MS)
    w.stop_button.click()
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    n = w._last_step.iteration
    assert 2 <= n < 500
    layer = viewer.layers["crop fit"]
    np.testing.assert_allclose(layer.vertices, w._last_step.verts.astype(np.float32))
    assert np.isfinite(layer.vertices).all()
    assert errors == []


@pytest.mark.slow
def test_closing_the_viewer_stops_the_worker(make_napari_viewer, qtbot, embryo, errors):
    viewer = make_napari_viewer(show=True)
    w, _ = _setup(viewer, embryo, iterations=500)
    w.run_button.click()
    qtbot.waitUntil(lambda: len(w.loss_plot.losses) >= 1, timeout=FIT_TIMEOUT_MS)
    worker = w._worker
    viewer.close()  # the widget's close hook quits the worker and waits for its thread
    assert not w.is_running
    qtbot.waitUntil(lambda: not worker.is_running, timeout=FIT_TIMEOUT_MS)
    assert len(w.loss_plot.losses) < 500
    assert errors == []


def test_preview_renders_the_seeds_on_the_image_grid(make_napari_viewer, qtbot, embryo, errors):
    viewer = make_napari_viewer(show=True)
    w, image = _setup(viewer, embryo, iterations=1)
    worker = w.preview()
    with qtbot.waitSignal(worker.finished, timeout=FIT_TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: "crop preview" in viewer.layers, timeout=10_000)
    preview = viewer.layers["crop preview"]
    assert preview.data.shape == image.data.shape
    np.testing.assert_allclose(preview.scale, image.scale)
    np.testing.assert_allclose(preview.translate, image.translate)
    # a membrane of unit density blurred by a normalised PSF: the voxel sum times the voxel
    # volume is the membrane area inside the box (the seed sphere lies well inside the crop)
    area = 4 * np.pi * 3.0**2
    total = preview.data.sum() * np.prod(image.scale)
    assert total == pytest.approx(area, rel=0.1)
    assert errors == []


@pytest.mark.slow
def test_out_of_memory_estimate_is_reported(make_napari_viewer, qtbot, embryo, errors, monkeypatch):
    viewer = make_napari_viewer(show=True)
    w, _ = _setup(viewer, embryo, iterations=3)
    monkeypatch.setenv("DELTAMIC_MAX_MEMORY_GB", "1e-6")  # ~1 kB allowed
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert errors and "GiB" in errors[-1]
    assert w.run_button.isEnabled()


def test_errors_are_reported_not_raised(make_napari_viewer, errors):
    viewer = make_napari_viewer(show=True)
    w = DeltaMicWidget(viewer)
    w.run_fit()
    assert errors and "no Image layer" in errors[-1]

    viewer.add_image(np.zeros((20, 20), np.float32), name="flat")
    w.run_fit()
    assert "dimensions" in errors[-1]

    viewer.layers.clear()
    viewer.add_image(np.random.default_rng(0).random((8, 16, 16), np.float32), name="vol", scale=(1.0, 0.5, 0.5))
    viewer.add_points(np.zeros((0, 3)), name="none", ndim=3)
    w.seed_source.setCurrentText("Points")
    w.run_fit()
    assert "no seeds" in errors[-1]

    viewer.layers["none"].data = np.array([[100.0, 100.0, 100.0]])  # far outside the 8 x 8 x 8 um box
    w.run_fit()
    assert "outside the image" in errors[-1]
    assert not w.is_running

    w.psf_combo.setCurrentText("Hanser + Zernike")
    w.zernike_edit.setText("4=abc")
    w.preview()
    assert "--zernike" in errors[-1]


def test_psf_pages_and_spacing_follow_the_widget(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    w = DeltaMicWidget(viewer)
    layer = viewer.add_image(np.zeros((4, 5, 6), np.float32), scale=(2.0, 0.5, 0.25))
    assert w.spacing_um() == (2.0, 0.5, 0.25)
    w.spacing_boxes[0].setValue(1.5)
    assert tuple(layer.scale) == (1.5, 0.5, 0.25)
    from deltamic_core.psf import GaussianPSF, GibsonLanniPSF, HanserPSF

    for name, kind in [("Gaussian", GaussianPSF), ("Gibson-Lanni", GibsonLanniPSF), ("Hanser + Zernike", HanserPSF)]:
        w.psf_combo.setCurrentText(name)
        assert w.psf_pages.currentIndex() == w.psf_combo.currentIndex()
        assert isinstance(w.make_psf(), kind)
    w.zernike_edit.setText("4=0.1, 11=-0.05")
    assert w.make_psf().as_dict()["zernike"] in ({"4": 0.1, "11": -0.05}, {4: 0.1, 11: -0.05})


@pytest.mark.slow
def test_screenshot_shows_image_and_fitted_surface_in_3d(make_napari_viewer, qtbot, embryo, errors):
    viewer = make_napari_viewer(show=True)
    w, image = _setup(viewer, embryo, iterations=2)
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert errors == []
    surface = viewer.layers["crop fit"]
    viewer.layers["seeds"].visible = False
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = (-20.0, 30.0, 120.0)

    def shot():
        qtbot.wait(50)
        return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(np.float64)

    both = shot()
    surface.visible = False
    image_only = shot()
    surface.visible, image.visible = True, False
    surface_only = shot()
    image.visible = True
    assert both.std() > 5.0, "the 3D view is blank"
    # each layer contributes visibly: hiding it changes a noticeable part of the picture
    assert np.mean(np.abs(both - image_only).sum(axis=-1) > 30) > 0.01, "the surface is not visible"
    assert np.mean(np.abs(both - surface_only).sum(axis=-1) > 30) > 0.01, "the image is not visible"
    # image and surface overlay in world coordinates (um): the surface sits inside the image box
    lo, hi = image.extent.world
    voxel = np.asarray(image.scale)
    assert np.all(surface.vertices >= lo - voxel) and np.all(surface.vertices <= hi + voxel)


def test_place_rec_mesh_on_image_grid(make_napari_viewer, errors):
    from importlib import resources

    viewer = make_napari_viewer(show=True)
    with resources.as_file(resources.files("deltamic_core") / "data" / "Sample01_007.rec") as rec:
        viewer.open(str(rec), plugin="napari-deltamic")  # through napari and the npe2 manifest
    surface = viewer.layers["Sample01_007"]
    raw = np.array(surface.vertices, dtype=np.float64)
    spacing, origin = (0.5, 0.2, 0.2), (1.0, 2.0, 3.0)
    viewer.add_image(np.zeros((4, 4, 4), np.uint8), name="stack", scale=spacing, translate=origin)
    w = DeltaMicWidget(viewer)
    w.image_combo.set_layer(viewer.layers["stack"])
    w.seed_source.setCurrentText("Surface")
    w.seed_combo.set_layer(surface)
    with pytest.raises(ValueError, match="voxel units"):
        w.seed_mesh()  # a voxel-unit mesh must be placed first
    w.place_button.click()
    assert errors == []
    np.testing.assert_allclose(surface.vertices, raw * spacing + origin, rtol=1e-6, atol=1e-4)
    assert surface.metadata["voxel_units"] is False
    w.place_button.click()  # a second click must not scale twice
    assert "already in um" in errors[-1]
    np.testing.assert_allclose(surface.vertices, raw * spacing + origin, rtol=1e-6, atol=1e-4)
    errors.clear()
    mesh = w.seed_mesh()
    assert mesh.labels is not None and mesh.n_cells == 3  # the cell labels survive


def test_seeds_from_labels_layer_follow_its_scale(make_napari_viewer, errors):
    viewer = make_napari_viewer(show=True)
    spacing = np.array([1.0, 0.5, 0.5])
    zz, yy, xx = np.indices((16, 32, 32)) * spacing[:, None, None, None]
    centre, radius = np.array([8.0, 8.0, 8.0]), 4.0
    ball = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2).astype(np.int32)
    viewer.add_labels(ball * 5, name="cells", scale=tuple(spacing))
    w = DeltaMicWidget(viewer)
    w.seed_source.setCurrentText("Labels")
    w.seed_combo.set_layer(viewer.layers["cells"])
    w.edge_box.setValue(1.0)
    layer = w.create_initial_mesh()
    assert errors == []
    r = np.linalg.norm(np.asarray(layer.vertices) - centre, axis=1)
    assert abs(np.median(r) - radius) < 0.6  # within about one voxel of the ball's surface (um)
    assert set(np.unique(layer.metadata["labels"])) == {0, 5}  # label ids are kept


def test_measured_psf_from_a_bead_layer(make_napari_viewer, errors):
    from deltamic_core.psf import MeasuredPSF

    viewer = make_napari_viewer(show=True)
    spacing = np.array([0.4, 0.1, 0.1])
    z, y, x = (np.indices((21, 41, 41)) - np.array([10, 20, 20])[:, None, None, None]) * spacing[:, None, None, None]
    bead = 1000 * np.exp(-(z**2 / (2 * 0.6**2) + (y**2 + x**2) / (2 * 0.2**2))) + 10
    viewer.add_image(bead.astype(np.float32), name="bead", scale=tuple(spacing))
    w = DeltaMicWidget(viewer)
    w.psf_combo.setCurrentText("Measured (Image layer)")
    w.bead_combo.set_layer(viewer.layers["bead"])
    psf = w.make_psf()
    assert isinstance(psf, MeasuredPSF)
    assert errors == []


@pytest.mark.slow
def test_learn_psf_reports_and_copies_back_the_learned_widths(make_napari_viewer, qtbot, embryo, errors):
    viewer = make_napari_viewer(show=True)
    w, _ = _setup(viewer, embryo, iterations=3)
    w.learn_psf.setChecked(True)
    w.sigma_boxes[1].setValue(0.6)  # start from a wrong lateral width
    before = [b.value() for b in w.sigma_boxes]
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert errors == []
    assert "learned GaussianPSF" in w.status_label.text()
    after = [b.value() for b in w.sigma_boxes]
    assert after != before
    assert w._last_step.psf_params["sigma_um"] == pytest.approx(after, abs=1e-3)


def _sphere_stack(tmp_path):
    """A TIFF of one noisy membrane sphere (r = 2.5 um) and a seeds CSV 0.4 um off its centre."""
    from deltamic_core.geometry import seed_spheres
    from deltamic_core.io import write_tiff
    from deltamic_core.pipeline import render_mesh_image
    from deltamic_core.psf import GaussianPSF

    spacing, shape = (0.5, 0.25, 0.25), (16, 32, 32)
    centre = (np.asarray(shape) - 1) * spacing / 2
    truth = seed_spheres(centre[None], np.array([2.5]))
    img = render_mesh_image(truth, shape, spacing, GaussianPSF(sigma_um=spacing), noise="poisson", photons=50.0,
                            background=2.0, seed=3)
    path = tmp_path / "sphere.tif"
    write_tiff(path, img, spacing)
    seed = centre + np.array([0.0, 0.4, -0.3])
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("z,y,x\n" + ",".join(f"{v:.6f}" for v in seed) + "\n")
    return path, seeds, seed


@pytest.mark.slow
def test_widget_fits_like_the_equivalent_command_line(make_napari_viewer, qtbot, errors, tmp_path):
    """The widget opened from the Plugins menu, with its controls set to the values of a
    ``deltamic fit`` command line, gives the CLI's mesh; the widget's old defaults do not."""
    from deltamic_core.cli import main
    from deltamic_core.io import read_mesh

    path, seeds, seed = _sphere_stack(tmp_path)
    out = tmp_path / "cli"
    assert main(["fit", str(path), "--seeds", str(seeds), "--iterations", "6", "--levels", "2", "1",
                 "--quiet", "--out", str(out)]) == 0
    cli_mesh = read_mesh(out / "mesh.ply")

    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-deltamic")
    viewer.add_points(seed[None], name="seeds", size=0.5)
    _, w = viewer.window.add_plugin_dock_widget("napari-deltamic", "deltaMic inverse rendering")
    qtbot.waitUntil(w.isVisible, timeout=5000)
    w.image_combo.set_layer(viewer.layers["sphere"])
    w.seed_source.setCurrentText("Points")
    w.seed_combo.set_layer(viewer.layers["seeds"])
    w.iter_box.setValue(6)  # --iterations 6
    w.levels_edit.setText("2 1")  # --levels 2 1
    # everything else stays at the widget's defaults, which must be the command line's

    def fit():
        w.run_button.click()
        qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
        assert errors == []
        return w.result_mesh()

    mesh = fit()
    assert mesh.verts.shape == cli_mesh.verts.shape and np.array_equal(mesh.faces, cli_mesh.faces)
    tol = 0.02  # um: 1/12 of the smallest voxel
    same = np.abs(mesh.verts - cli_mesh.verts).max()
    print(f"widget vs CLI: max vertex distance {same:.2e} um")
    assert same < tol
    # the widget's former defaults (a fixed 3 um seed, sigma 0.6/0.25/0.25 um) move the surface
    # by far more than the tolerance: the comparison above would catch them
    w.radius_box.setValue(3.0)
    w.psf_panel.set_sigma((0.6, 0.25, 0.25))
    other = fit()
    assert other.verts.shape == cli_mesh.verts.shape  # same tessellation, moved vertices
    moved = np.abs(other.verts - cli_mesh.verts).max()
    print(f"old widget defaults vs CLI: max vertex distance {moved:.3f} um")
    assert moved > 5 * tol
