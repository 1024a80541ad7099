"""Results are napari data, both ways, in a shown viewer under Xvfb: "Save all" writes the
folder ``deltamic fit --out DIR`` writes (same files, same report keys, a manifest, the same
mesh and labels for the same fit), "Open result" and ``viewer.open(DIR)`` load such a folder
(the CLI's too) through the plugin's reader; the settings are remembered between sessions and
"Copy as command" gives the line the CLI parses back into the widget's FitJob."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("error:Private attribute access:FutureWarning"),
]

from qtpy.QtWidgets import QApplication, QFileDialog  # noqa: E402

from gui_helpers import click as _click  # noqa: E402
from gui_helpers import sphere_stack  # noqa: E402

TIMEOUT_MS = 180_000


def _files(d) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.mark.slow
def test_save_all_writes_the_cli_folder_and_open_result_reads_it_back(
    make_napari_viewer, gui_open_widget, qtbot, gui_errors, tmp_path, monkeypatch
):
    from deltamic_core.cli import main
    from deltamic_core.io import read_image, read_mesh
    from deltamic_core.io.outdir import manifest_matches

    path, seeds_csv, seed = sphere_stack(tmp_path)
    cli_out = tmp_path / "cli"
    argv = ["fit", str(path), "--seeds", str(seeds_csv), "--iterations", "4", "--levels", "1", "--quiet"]
    assert main([*argv, "--out", str(cli_out)]) == 0

    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-deltamic")
    viewer.add_points(seed[None], name="seeds", size=0.5)
    w = gui_open_widget(viewer)
    w.image_combo.set_layer(viewer.layers["sphere"])
    w.seed_source.setCurrentText("Points")
    w.seed_combo.set_layer(viewer.layers["seeds"])
    w.iter_box.setValue(4)
    w.levels_edit.setText("1")
    _click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT_MS)
    assert gui_errors == []

    out = tmp_path / "widget result"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(out), "")))
    _click(qtbot, w.save_all_button)
    qtbot.waitUntil(lambda: getattr(w, "saved_result", None) == str(out), timeout=TIMEOUT_MS)
    assert gui_errors == []
    # the same files as `deltamic fit` (manifest included), complete and provably ours
    assert _files(out) == _files(cli_out)
    assert manifest_matches(out)
    cli_report = json.loads((cli_out / "report.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert set(cli_report) <= set(report), set(cli_report) - set(report)
    assert report["iterations"] == cli_report["iterations"] == 4
    assert len(report["loss_history"]) == 4
    # the same fit gives the same mesh and labels (the widget fits like the command line)
    a, b = read_mesh(out / "mesh.ply"), read_mesh(cli_out / "mesh.ply")
    assert a.verts.shape == b.verts.shape and np.abs(a.verts - b.verts).max() < 0.02
    la, lb = read_image(out / "labels.tif")[0], read_image(cli_out / "labels.tif")[0]
    assert la.shape == lb.shape and np.mean(la == lb) > 0.995
    # the report's command is the CLI's line for the same job (the seeds layer: a placeholder)
    cmd = report["command"]
    assert cmd[:3] == ["deltamic", "fit", str(path)] and "--seeds" in cmd and "SEEDS.csv" in cmd

    # saving again over its own result replaces it; a folder with a foreign file is refused
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    w.save_all(foreign)
    assert len(gui_errors) == 1 and "Save all" not in gui_errors[0], gui_errors  # refused before any work
    assert (foreign / "notes.txt").read_text() == "keep me" and _files(foreign) == ["notes.txt"]
    gui_errors.clear()

    # Open result: a new session opens the folder through the plugin's reader
    for name in [ly.name for ly in viewer.layers]:
        viewer.layers.remove(name)
    w.iter_box.setValue(0)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(out)))
    _click(qtbot, w.open_result_button)
    assert gui_errors == []
    names = [ly.name for ly in viewer.layers]
    assert names == ["sphere", "widget result cells", "widget result fit"], names
    labels = viewer.layers["widget result cells"]
    np.testing.assert_array_equal(labels.data, la)
    np.testing.assert_allclose(labels.scale, (0.5, 0.25, 0.25))
    assert list(labels.features["index"]) == [0, 1]
    vol = float(labels.features["volume_um3"].iloc[1])
    assert vol == pytest.approx(report["cells"][0]["volume_um3"])
    surface = viewer.layers["widget result fit"]
    np.testing.assert_allclose(surface.vertices, read_mesh(out / "mesh.rec").verts, atol=1e-5)
    # and the settings of its report: the command's --iterations 4 --levels 1
    assert w.iter_box.value() == 4 and w.levels_edit.text() == "1"
    # the CLI's own folder opens the same way
    layers = viewer.open(str(cli_out), plugin="napari-deltamic")
    assert [type(ly).__name__ for ly in layers] == ["Image", "Labels", "Surface"]
    assert gui_errors == []


@pytest.mark.slow
def test_settings_are_remembered_and_copy_as_command_parses_back(
    make_napari_viewer, gui_open_widget, qtbot, gui_errors, tmp_path
):
    from deltamic_core.cli import build_parser, job_from_args
    from deltamic_core.pipeline import InitSpec

    path, _, seed = sphere_stack(tmp_path)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-deltamic")
    viewer.add_points(seed[None], name="seeds", size=0.5)
    w = gui_open_widget(viewer)
    w.seed_combo.set_layer(viewer.layers["seeds"])
    defaults = w.settings()
    w.iter_box.setValue(7)
    w.levels_edit.setText("2 1")
    w.stain_combo.setCurrentText("both")
    w.edge_box.setValue(0.9)
    w.psf_combo.setCurrentText("Gibson-Lanni")
    w.gl_boxes["na"].setValue(1.2)
    w.gl_boxes["depth_um"].setValue(4.0)
    w.learn_psf.setChecked(True)
    w.smooth_box.setValue(33.0)
    changed = w.settings()
    assert changed != defaults

    # Copy as command: the clipboard line, parsed by the CLI, is the widget's FitJob
    _click(qtbot, w.copy_button)
    assert gui_errors == []
    line = QApplication.clipboard().text()
    words = shlex.split(line)
    assert words[:3] == ["deltamic", "fit", str(path)]
    parsed = job_from_args(build_parser().parse_args(words[1:]))
    job = w.fit_job()
    want = job.replace(image=str(path), image_data=None, init=InitSpec("seeds", "SEEDS.csv"), out="OUT", progress=True)
    assert parsed == want
    assert parsed.fit_config() == job.fit_config()

    # remembered: a new session (viewer closed, a new one opened) starts from these settings
    viewer.close()
    viewer2 = make_napari_viewer(show=True)
    w2 = gui_open_widget(viewer2)
    assert w2.settings() == changed
    # Restore defaults: the command line's defaults again, and remembered as such
    _click(qtbot, w2.defaults_button)
    assert w2.settings() == defaults
    viewer2.close()
    w3 = gui_open_widget(make_napari_viewer(show=True))
    assert w3.settings() == defaults
    assert gui_errors == []


def test_a_result_with_a_count_per_level_keeps_the_default_and_says_so():
    """The widget has one iteration count for every level: a report's ``--iterations 30 40 5``
    leaves it at the default and says so (never a crash, never a silently different fit)."""
    from napari_deltamic._settings import settings_from_command

    words = ["deltamic", "fit", "a.tif", "--seeds", "s.csv", "--out", "o", "--levels", "4", "2", "1"]
    notes: list[str] = []
    one = settings_from_command([*words, "--iterations", "9"], {"iterations": 0}, notes)
    assert one["iterations"] == 9 and notes == []
    per_level = settings_from_command([*words, "--iterations", "30", "40", "5"], {"iterations": 0}, notes)
    assert per_level["iterations"] == 0 and per_level["levels"] == "4 2 1"
    assert len(notes) == 1 and "--iterations 30 40 5" in notes[0]
