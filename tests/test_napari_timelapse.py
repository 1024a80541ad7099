"""Time-lapse in a shown viewer under Xvfb, on the user's path: a (T, Z, Y, X) TIFF opened with
``viewer.open``, the widget from the Plugins menu, Run on the current frame, then Propagate
(and Stop) clicked. The fitted volumes are checked against the true spheres of each frame."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui]

from gui_helpers import click  # noqa: E402

SPACING, SHAPE = (1.0, 0.75, 0.75), (12, 16, 16)
CENTRE = np.array([5.5, 5.6, 5.6])
RADII = (2.45, 2.2, 2.45)  # frame 1 is fitted first: the propagation goes forwards and backwards
TIMEOUT_MS = 240_000


def _sphere(radius):
    import trimesh

    return trimesh.creation.icosphere(subdivisions=3, radius=radius).apply_translation(CENTRE)


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    from deltamic_core.io import write_tiff
    from deltamic_core.mesh import Mesh
    from deltamic_core.pipeline import render_mesh_image
    from deltamic_core.psf import GaussianPSF

    frames = []
    for r in RADII:
        s = _sphere(r)
        frames.append(render_mesh_image(Mesh(s.vertices, s.faces), SHAPE, SPACING, GaussianPSF(SPACING)))
    path = tmp_path_factory.mktemp("movie") / "movie.tif"
    write_tiff(path, np.stack(frames), SPACING, axes="TZYX")
    return path


def _open(make_napari_viewer, gui_open_widget, movie, iterations):
    viewer = make_napari_viewer(show=True)
    (image,) = viewer.open(str(movie), plugin="napari-deltamic")
    w = gui_open_widget(viewer)
    viewer.add_points(CENTRE[None], name="seeds", size=1.0)
    w.image_combo.set_layer(image)
    w.seed_source.setCurrentText("Points")
    w.seed_combo.set_layer(viewer.layers["seeds"])
    w.radius_box.setValue(2.0)
    w.edge_box.setValue(1.0)
    w.iter_box.setValue(iterations)
    w.levels_edit.setText("1")
    return viewer, image, w


def test_reader_gives_a_time_series_with_the_voxel_size(make_napari_viewer, movie):
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(movie), plugin="napari-deltamic")
    assert layer.data.shape == (len(RADII), *SHAPE)
    np.testing.assert_allclose(layer.scale, (1.0, *SPACING))
    assert viewer.dims.ndim == 4 and viewer.dims.nsteps[0] == len(RADII)


@pytest.mark.slow
def test_run_then_propagate_fits_every_frame(make_napari_viewer, gui_open_widget, movie, qtbot, gui_errors):
    viewer, image, w = _open(make_napari_viewer, gui_open_widget, movie, iterations=25)
    assert w.timelapse_panel.isVisible()
    viewer.dims.set_current_step(0, 1)
    # Propagate before any fit: refused in one message
    click(qtbot, w.propagate_button)
    assert len(gui_errors) == 1 and "Run" in gui_errors[0]
    gui_errors.clear()

    click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT_MS)
    click(qtbot, w.propagate_button)
    assert not w.run_button.isEnabled()
    qtbot.waitUntil(lambda: not w.propagator.is_running, timeout=TIMEOUT_MS)
    assert gui_errors == []
    assert "done: 3 frames" in w.propagate_status.text()
    assert w.run_button.isEnabled()

    # time-indexed results: a Surface with a leading t coordinate, a (T, Z, Y, X) Labels layer
    surface = viewer.layers["movie track"]
    labels = viewer.layers["movie track cells"]
    assert surface.ndim == 4 and sorted(np.unique(surface.vertices[:, 0])) == [0.0, 1.0, 2.0]
    assert labels.data.shape == (len(RADII), *SHAPE)
    np.testing.assert_allclose(labels.scale, (1.0, *SPACING))
    truth = [_sphere(r).volume for r in RADII]
    tracks = labels.metadata["tracks"]
    assert sorted(r["t"] for r in tracks) == [0, 1, 2] and {r["cell"] for r in tracks} == {1}
    vols = [next(r["volume_um3"] for r in tracks if r["t"] == t) for t in range(3)]
    np.testing.assert_allclose(vols, truth, rtol=0.08)
    # the frame on screen's measurements are the features napari's table shows
    for t in (0, 2):
        viewer.dims.set_current_step(0, t)
        row = labels.features[labels.features["index"] == 1]
        assert float(row["volume_um3"].iloc[0]) == pytest.approx(vols[t])
        # each frame's labels hold that frame's cell: voxel volume close to its mesh volume
        voxels = np.count_nonzero(labels.data[t] == 1) * float(np.prod(SPACING))
        assert voxels == pytest.approx(vols[t], rel=0.15)
    # napari shows the faces of the current time point only
    viewer.dims.ndisplay = 3
    viewer.dims.set_current_step(0, 2)
    qtbot.wait(100)
    drawn = viewer.window._qt_viewer.canvas.layer_to_visual[surface].node.mesh_data.get_vertices()
    assert len(drawn) == np.count_nonzero(surface.vertices[:, 0] == 2.0)
    np.testing.assert_allclose(np.sort(drawn[:, 2]), np.sort(surface.vertices[surface.vertices[:, 0] == 2.0, 1]))


@pytest.mark.slow
def test_propagate_stops_and_keeps_the_frames_done(make_napari_viewer, gui_open_widget, movie, qtbot, gui_errors):
    viewer, image, w = _open(make_napari_viewer, gui_open_widget, movie, iterations=5)
    viewer.dims.set_current_step(0, 0)
    click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT_MS)
    w.iter_box.setValue(100_000)  # the propagation would run for hours
    click(qtbot, w.propagate_button)
    # Stop as soon as the first iteration of frame 1 is shown (a frame may end early, by patience)
    qtbot.waitUntil(lambda: w.propagate_status.text().startswith("frame 1"), timeout=TIMEOUT_MS)
    click(qtbot, w.propagate_stop_button)
    qtbot.waitUntil(lambda: not w.propagator.is_running, timeout=TIMEOUT_MS)
    assert gui_errors == []
    done = sorted(w.propagator.frames)
    assert done in ([0], [0, 1])  # frame 2 is never reached
    assert f"stopped: {len(done)} of 3 frames" in w.propagate_status.text()
    labels = viewer.layers["movie track cells"]
    for t in range(3):
        assert labels.data[t].max() == (1 if t in done else 0)
    assert sorted(np.unique(viewer.layers["movie track"].vertices[:, 0])) == [float(t) for t in done]
    assert w.propagate_button.isEnabled() and w.run_button.isEnabled()
    assert not w.propagate_stop_button.isEnabled()
