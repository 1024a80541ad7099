"""The deltaMic dock widget in a shown napari viewer under Xvfb, opened the way a user opens it
(Plugins menu: napari builds the widget and hands it a public-only proxy of the viewer) and
driven through its buttons: a short real fit on a crop of the sample embryo through the thread
worker, Stop, closing the viewer mid-fit, results, and error reporting."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [
    pytest.mark.gui,
    # plugin code must not reach into napari's private attributes (napari warns, later refuses)
    pytest.mark.filterwarnings("error:Private attribute access:FutureWarning"),
]

from qtpy.QtCore import QThreadPool  # noqa: E402

from gui_helpers import click as _click  # noqa: E402
from gui_helpers import sphere_stack, start_fit  # noqa: E402

FIT_TIMEOUT_MS = 180_000


def _save_dialog_returns(monkeypatch, path) -> None:
    """The user picks ``path`` in the next file-save dialog."""
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(path), "")))


def _crop_one_cell(embryo, cell: int = 0, half_um: float = 5.5):
    """A crop of the embryo stack around one cell's centroid; returns (crop, origin_um, centroid_um)."""
    spacing = np.asarray(embryo["spacing_um"])
    c = embryo["centroids_um"][cell]
    lo = np.maximum(np.floor((c - half_um) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((c + half_um) / spacing).astype(int) + 1, embryo["image"].shape)
    crop = embryo["image"][lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    return crop, lo * spacing, c


def _setup(viewer, open_widget, embryo, iterations: int):
    """Open the widget from the Plugins menu, then load a crop and a seed and set the controls."""
    w = open_widget(viewer)
    crop, origin, centroid = _crop_one_cell(embryo)
    spacing = embryo["spacing_um"]
    image = viewer.add_image(crop, name="crop", scale=spacing, translate=tuple(origin))
    viewer.add_points(centroid[None], name="seeds", size=1.0)
    # the widget's layer pickers follow the viewer's layer list through napari's proxy
    w.image_combo.set_layer(image)
    w.seed_source.setCurrentText("Points")
    w.seed_combo.set_layer(viewer.layers["seeds"])
    # the spacing boxes show the image layer's scale
    assert w.spacing_um() == pytest.approx(tuple(spacing))
    # the cell's equivalent radius is ~4.1 um: a seed of 3 um overlaps its membrane's blur
    w.radius_box.setValue(3.0)
    w.edge_box.setValue(1.5)  # ~100 triangles: keeps the test's iterations cheap
    w.psf_panel.set_sigma(embryo["params"]["sigma_um"])
    w.iter_box.setValue(iterations)
    w.levels_edit.setText("1")
    return w, image


@pytest.mark.slow
def test_run_updates_the_surface_then_stop_keeps_the_last_mesh(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors
):
    viewer = make_napari_viewer(show=True)
    w, _ = _setup(viewer, gui_open_widget, embryo, iterations=500)
    start_fit(qtbot, w)
    assert w.is_running and not w.run_button.isEnabled() and w.stop_button.isEnabled()
    layer = viewer.layers["crop fit"]  # the seed mesh, shown once the worker prepared the job
    seed = w.runner.last_prepared.init_mesh.verts  # the mesh the fit starts from
    # the Surface layer updates while the fit runs
    qtbot.waitUntil(lambda: layer.metadata.get("fit_iteration", 0) >= 2, timeout=FIT_TIMEOUT_MS)
    assert w.is_running
    assert np.abs(np.asarray(layer.vertices) - seed).max() > 1e-3  # the surface moved (um)
    _click(qtbot, w.stop_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    n = len(w.loss_plot.losses)
    assert 2 <= n < 500
    # the layer holds the mesh of the last finished iteration
    assert layer.metadata["fit_iteration"] == n
    assert np.isfinite(layer.vertices).all()
    assert w.run_button.isEnabled() and not w.stop_button.isEnabled()
    assert gui_errors == []


@pytest.mark.slow
def test_short_fit_lowers_the_loss_and_gives_results(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors, tmp_path, monkeypatch
):
    viewer = make_napari_viewer(show=True)
    w, image = _setup(viewer, gui_open_widget, embryo, iterations=4)
    start_fit(qtbot, w)
    layer = viewer.layers["crop fit"]
    v0 = w.runner.last_prepared.init_mesh.verts  # the mesh the fit starts from
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert gui_errors == []
    losses = w.loss_plot.values()
    assert len(losses) == 4
    assert np.all(np.diff(losses) < 0)
    v1 = np.asarray(layer.vertices)
    assert v1.shape == v0.shape and np.isfinite(v1).all()
    assert np.abs(v1 - v0).max() > 1e-3  # the surface moved (um)
    assert layer.metadata["fit_iteration"] == 4
    assert w.first_update_s is not None and w.run_button.isEnabled()

    # results, through the buttons: mesh export, instance labels on the image grid, measurements, CSV
    out = tmp_path / "fit.rec"
    _save_dialog_returns(monkeypatch, out)
    _click(qtbot, w.export_button)
    from deltamic_core.io import read_mesh

    back = read_mesh(out)
    np.testing.assert_allclose(back.verts, v1, atol=1e-4)
    _click(qtbot, w.labels_button)  # rasterises in a worker
    qtbot.waitUntil(lambda: "crop cells" in viewer.layers and w.labels_button.isEnabled(), timeout=FIT_TIMEOUT_MS)
    labels_layer = viewer.layers["crop cells"]
    assert labels_layer.data.shape == image.data.shape
    np.testing.assert_allclose(labels_layer.scale, image.scale)
    np.testing.assert_allclose(labels_layer.translate, image.translate)
    assert set(np.unique(labels_layer.data)) == {0, 1}
    _click(qtbot, w.measure_button)  # measures in a worker
    qtbot.waitUntil(w.measure_button.isEnabled, timeout=FIT_TIMEOUT_MS)
    assert w.table.rowCount() == 1
    csv_path = tmp_path / "cells.csv"
    _save_dialog_returns(monkeypatch, csv_path)
    _click(qtbot, w.csv_button)
    with open(csv_path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == 1 and float(read[0]["volume_um3"]) > 0
    assert gui_errors == []


@pytest.mark.slow
def test_closing_the_viewer_stops_the_worker(make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors):
    pool = QThreadPool.globalInstance()  # napari's thread workers run here
    viewer = make_napari_viewer(show=True)
    w, _ = _setup(viewer, gui_open_widget, embryo, iterations=500)
    idle = pool.activeThreadCount()
    _click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: len(w.loss_plot.losses) >= 1, timeout=FIT_TIMEOUT_MS)
    assert pool.activeThreadCount() == idle + 1  # the fit's worker thread
    viewer.close()  # the window's Close event reaches the widget, which stops the fit
    assert not w.is_running
    qtbot.waitUntil(lambda: pool.activeThreadCount() == idle, timeout=FIT_TIMEOUT_MS)
    assert len(w.loss_plot.losses) < 500
    assert gui_errors == []


def test_preview_renders_the_seeds_on_the_image_grid(make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors):
    viewer = make_napari_viewer(show=True)
    w, image = _setup(viewer, gui_open_widget, embryo, iterations=1)
    _click(qtbot, w.preview_button)
    qtbot.waitUntil(lambda: "crop preview" in viewer.layers, timeout=FIT_TIMEOUT_MS)
    preview = viewer.layers["crop preview"]
    assert preview.data.shape == image.data.shape
    np.testing.assert_allclose(preview.scale, image.scale)
    np.testing.assert_allclose(preview.translate, image.translate)
    # a membrane of unit density blurred by a normalised PSF: the voxel sum times the voxel
    # volume is the membrane area inside the box (the seed sphere lies well inside the crop)
    area = 4 * np.pi * 3.0**2
    total = preview.data.sum() * np.prod(image.scale)
    assert total == pytest.approx(area, rel=0.1)
    qtbot.waitUntil(w.preview_button.isEnabled, timeout=10_000)
    assert gui_errors == []


@pytest.mark.slow
def test_out_of_memory_estimate_is_reported(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors, monkeypatch
):
    viewer = make_napari_viewer(show=True)
    w, _ = _setup(viewer, gui_open_widget, embryo, iterations=3)
    monkeypatch.setenv("DELTAMIC_MAX_MEMORY_GB", "1e-6")  # ~1 kB allowed
    _click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert gui_errors and "GiB" in gui_errors[-1]
    assert w.run_button.isEnabled()


def test_errors_are_reported_not_raised(make_napari_viewer, gui_open_widget, qtbot, gui_errors):
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    _click(qtbot, w.run_button)
    assert gui_errors and "no Image layer" in gui_errors[-1]

    viewer.add_image(np.zeros((20, 20), np.float32), name="flat")
    _click(qtbot, w.run_button)
    assert "dimensions" in gui_errors[-1]

    viewer.layers.clear()
    viewer.add_image(np.random.default_rng(0).random((8, 16, 16), np.float32), name="vol", scale=(1.0, 0.5, 0.5))
    viewer.add_points(np.zeros((0, 3)), name="none", ndim=3)
    w.seed_source.setCurrentText("Points")
    _click(qtbot, w.run_button)
    assert "no seeds" in gui_errors[-1]

    viewer.layers["none"].data = np.array([[100.0, 100.0, 100.0]])  # far outside the 8 x 8 x 8 um box
    n = len(gui_errors)
    _click(qtbot, w.run_button)  # the seeds are checked by the fit's worker
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert len(gui_errors) == n + 1 and "outside the image" in gui_errors[-1]
    assert "fit failed" not in gui_errors[-1]  # a mistake in the input, said as it is
    assert w.run_button.isEnabled() and not w.stop_button.isEnabled()

    w.psf_combo.setCurrentText("Hanser + Zernike")
    w.zernike_edit.setText("4=abc")
    _click(qtbot, w.preview_button)
    assert "--zernike" in gui_errors[-1]


def test_psf_pages_and_spacing_follow_the_widget(make_napari_viewer, gui_open_widget):
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
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
def test_screenshot_shows_image_and_fitted_surface_in_3d(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors
):
    viewer = make_napari_viewer(show=True)
    w, image = _setup(viewer, gui_open_widget, embryo, iterations=2)
    _click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert gui_errors == []
    surface = viewer.layers["crop fit"]
    viewer.layers["seeds"].visible = False
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 / older
    camera.angles = (-20.0, 30.0, 120.0)

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


def test_place_rec_mesh_on_image_grid(make_napari_viewer, gui_open_widget, qtbot, gui_errors):
    from importlib import resources

    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    with resources.as_file(resources.files("deltamic_core") / "data" / "Sample01_007.rec") as rec:
        viewer.open(str(rec), plugin="napari-deltamic")  # through napari and the npe2 manifest
    surface = viewer.layers["Sample01_007"]
    raw = np.array(surface.vertices, dtype=np.float64)
    spacing, origin = (0.5, 0.2, 0.2), (1.0, 2.0, 3.0)
    viewer.add_image(np.zeros((4, 4, 4), np.uint8), name="stack", scale=spacing, translate=origin)
    w.image_combo.set_layer(viewer.layers["stack"])
    w.seed_source.setCurrentText("Surface")
    w.seed_combo.set_layer(surface)
    _click(qtbot, w.seed_button)  # a voxel-unit mesh must be placed first
    assert "voxel units" in gui_errors[-1]
    assert "stack fit" not in viewer.layers
    gui_errors.clear()
    _click(qtbot, w.place_button)
    assert gui_errors == []
    np.testing.assert_allclose(surface.vertices, raw * spacing + origin, rtol=1e-6, atol=1e-4)
    assert surface.metadata["voxel_units"] is False
    _click(qtbot, w.place_button)  # a second click must not scale twice
    assert "already in um" in gui_errors[-1]
    np.testing.assert_allclose(surface.vertices, raw * spacing + origin, rtol=1e-6, atol=1e-4)
    gui_errors.clear()
    _click(qtbot, w.seed_button)
    assert gui_errors == []
    fit = viewer.layers["stack fit"]
    np.testing.assert_allclose(fit.vertices, surface.vertices, atol=1e-4)
    labels = fit.metadata["labels"]
    assert len(set(np.unique(labels)) - {0}) == 3  # the cell labels survive


def test_seeds_from_labels_layer_follow_its_scale(make_napari_viewer, gui_open_widget, qtbot, gui_errors):
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    spacing = np.array([1.0, 0.5, 0.5])
    zz, yy, xx = np.indices((16, 32, 32)) * spacing[:, None, None, None]
    centre, radius = np.array([8.0, 8.0, 8.0]), 4.0
    ball = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2).astype(np.int32)
    viewer.add_labels(ball * 5, name="cells", scale=tuple(spacing))
    w.seed_source.setCurrentText("Labels")
    w.seed_combo.set_layer(viewer.layers["cells"])
    w.edge_box.setValue(1.0)
    _click(qtbot, w.seed_button)
    assert gui_errors == []
    layer = viewer.layers["deltaMic fit"]  # no image layer yet: the default name
    r = np.linalg.norm(np.asarray(layer.vertices) - centre, axis=1)
    assert abs(np.median(r) - radius) < 0.6  # within about one voxel of the ball's surface (um)
    assert set(np.unique(layer.metadata["labels"])) == {0, 5}  # label ids are kept


def test_measured_psf_from_a_bead_layer(make_napari_viewer, gui_open_widget, gui_errors):
    from deltamic_core.psf import MeasuredPSF

    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    spacing = np.array([0.4, 0.1, 0.1])
    z, y, x = (np.indices((21, 41, 41)) - np.array([10, 20, 20])[:, None, None, None]) * spacing[:, None, None, None]
    bead = 1000 * np.exp(-(z**2 / (2 * 0.6**2) + (y**2 + x**2) / (2 * 0.2**2))) + 10
    viewer.add_image(bead.astype(np.float32), name="bead", scale=tuple(spacing))
    w.psf_combo.setCurrentText("Measured (Image layer)")
    w.bead_combo.set_layer(viewer.layers["bead"])
    psf = w.make_psf()
    assert isinstance(psf, MeasuredPSF)
    assert gui_errors == []


@pytest.mark.slow
def test_learn_psf_reports_and_copies_back_the_learned_widths(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors
):
    viewer = make_napari_viewer(show=True)
    w, _ = _setup(viewer, gui_open_widget, embryo, iterations=3)
    w.learn_psf.setChecked(True)
    w.sigma_boxes[1].setValue(0.6)  # start from a wrong lateral width
    before = [b.value() for b in w.sigma_boxes]
    _click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert gui_errors == []
    assert "learned GaussianPSF" in w.status_label.text()
    after = [b.value() for b in w.sigma_boxes]
    assert after != before


@pytest.mark.slow
def test_widget_fits_like_the_equivalent_command_line(make_napari_viewer, gui_open_widget, qtbot, gui_errors, tmp_path):
    """The widget opened from the Plugins menu, with its controls set to the values of a
    ``deltamic fit`` command line, gives the CLI's mesh; the widget's old defaults do not."""
    from deltamic_core.cli import main
    from deltamic_core.io import read_mesh

    path, seeds, seed = sphere_stack(tmp_path)
    out = tmp_path / "cli"
    assert (
        main(
            [
                "fit",
                str(path),
                "--seeds",
                str(seeds),
                "--iterations",
                "6",
                "--levels",
                "2",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cli_mesh = read_mesh(out / "mesh.ply")

    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-deltamic")
    viewer.add_points(seed[None], name="seeds", size=0.5)
    w = gui_open_widget(viewer)
    w.image_combo.set_layer(viewer.layers["sphere"])
    w.seed_source.setCurrentText("Points")
    w.seed_combo.set_layer(viewer.layers["seeds"])
    w.iter_box.setValue(6)  # --iterations 6
    w.levels_edit.setText("2 1")  # --levels 2 1
    # everything else stays at the widget's defaults, which must be the command line's

    def fit():
        _click(qtbot, w.run_button)
        qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
        assert gui_errors == []
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
