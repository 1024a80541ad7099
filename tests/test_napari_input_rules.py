"""Issue 10 on the napari widget's path (a shown viewer, the widget opened through
``add_plugin_dock_widget``, files through ``viewer.open``):

- case 4: a voxel size that is not in the file's metadata is shown in the widget as assumed
  (per axis, only the missing axis);
- case 5: seeds clicked in napari follow the command line's rule: smaller than a voxel is
  refused (one error notification, nothing built, also on Run), overlapping spheres are shrunk
  until they touch and the widget says so (Create mesh with a Points layer).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.gui


def _stack(shape=(6, 16, 16)):
    rng = np.random.default_rng(0)
    return (rng.random(shape) * 100).astype(np.float32)


@pytest.fixture
def gui_warnings(monkeypatch):
    """The warning notifications the plugin shows, collected."""
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown.append(str(msg)))
    return shown


def test_spacing_not_in_metadata_is_shown_as_assumed(make_napari_viewer, gui_open_widget, gui_manifest, tmp_path):
    # an ImageJ TIFF with a calibrated xy (0.2 um) and no z step ("spacing" key missing)
    path = tmp_path / "no_z.tif"
    tifffile.imwrite(path, _stack(), imagej=True, resolution=(5.0, 5.0), metadata={"unit": "um", "axes": "ZYX"})
    full = tmp_path / "calibrated.tif"
    tifffile.imwrite(
        full, _stack(), imagej=True, resolution=(5.0, 5.0), metadata={"unit": "um", "axes": "ZYX", "spacing": 0.5}
    )
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    with pytest.warns(UserWarning, match="z"):  # the reader's own warning (the CLI prints it)
        viewer.open(str(path), plugin=gui_manifest.name)
    layer = viewer.layers["no_z"]
    assert w.image_combo.layer().name == "no_z"
    np.testing.assert_allclose(w.spacing_um(), (1.0, 0.2, 0.2))
    note = w.spacing_note.text()
    assert w.spacing_note.isVisible() and "z assumed 1 um" in note, note
    assert "y assumed" not in note and "x assumed" not in note and "y, " not in note, note
    # the user sets the true z step: it is applied to the layer
    w.spacing_boxes[0].setValue(0.5)
    np.testing.assert_allclose(layer.scale, (0.5, 0.2, 0.2))
    note = w.spacing_note.text()
    assert "assumed" not in note and "typed" in note and "(z)" in note, note
    # a fully calibrated file: nothing assumed
    viewer.open(str(full), plugin=gui_manifest.name)
    w.image_combo.set_layer(viewer.layers["calibrated"])  # the user picks it (the choice is kept)
    np.testing.assert_allclose(w.spacing_um(), (0.5, 0.2, 0.2))
    assert "assumed" not in w.spacing_note.text(), w.spacing_note.text()
    # back to the first file: the typed z step is kept and no longer called assumed
    w.image_combo.set_layer(layer)
    np.testing.assert_allclose(w.spacing_um(), (0.5, 0.2, 0.2))
    assert "z assumed" not in w.spacing_note.text(), w.spacing_note.text()


def _seed_setup(viewer, w, centres, radius):
    viewer.add_image(_stack((16, 24, 24)), name="img", scale=(1.0, 1.0, 1.0))
    viewer.add_points(np.asarray(centres, float), name="seeds", ndim=3)
    w.seed_source.setCurrentText("Points")
    w.seed_combo.set_layer(viewer.layers["seeds"])
    w.radius_box.setValue(radius)


def test_overlapping_seeds_are_shrunk_and_the_widget_says_so(
    make_napari_viewer, gui_open_widget, qtbot, gui_errors, gui_warnings
):
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    c = np.array([[8.0, 12.0, 8.0], [8.0, 12.0, 14.0]])  # 6 um apart, radius 4: overlapping by 2 um
    _seed_setup(viewer, w, c, 4.0)
    w.seed_button.click()
    assert not gui_errors, gui_errors
    assert any("2 overlapping seed sphere(s) shrunk until they touch" in m for m in gui_warnings), gui_warnings
    surf = viewer.layers["img fit"]
    v = np.asarray(surf.vertices, float)
    d = np.linalg.norm(v[:, None, :] - c[None], axis=2)  # distance of every vertex to both centres
    near = d.argmin(axis=1)
    assert set(near.tolist()) == {0, 1}
    r_own = d[np.arange(len(v)), near]
    # each sphere has radius 3 (= 6 / 2: touching), up to the polyhedral approximation
    assert r_own.max() <= 3.0 + 1e-6 and r_own.min() > 0.85 * 3.0, (r_own.min(), r_own.max())
    # no vertex of one sphere strictly inside the other
    r_other = d[np.arange(len(v)), 1 - near]
    assert r_other.min() >= 3.0 - 1e-6
    # Run prepares the job in its worker: the same warning, once, as a notification
    gui_warnings.clear()
    w.iter_box.setValue(1)
    w.levels_edit.setText("1")
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.is_running, timeout=120_000)
    assert not gui_errors, gui_errors
    assert sum("overlapping seed sphere(s) shrunk" in m for m in gui_warnings) == 1, gui_warnings


def test_seed_smaller_than_a_voxel_is_refused(make_napari_viewer, gui_open_widget, qtbot, gui_errors, gui_warnings):
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    _seed_setup(viewer, w, [[8.0, 12.0, 12.0]], 0.5)  # voxel 1 um
    n_layers = len(viewer.layers)
    w.seed_button.click()
    assert len(gui_errors) == 1 and "smaller than a voxel" in gui_errors[0], gui_errors
    assert "\n" not in gui_errors[0]
    assert len(viewer.layers) == n_layers  # nothing built
    # the same refusal when Run is pressed with these seeds
    w.run_button.click()  # checked by the fit's worker
    qtbot.waitUntil(lambda: not w.is_running, timeout=60_000)
    assert len(gui_errors) == 2 and "smaller than a voxel" in gui_errors[1], gui_errors
    assert w.run_button.isEnabled()
