"""Every way a napari user reaches the plugin, in a shown viewer under Xvfb: the Plugins menu,
File > Open Sample, dropping .tif/.obj files on the viewer (napari offers a choice of readers),
and saving a Surface layer with our writer. Plugin, widget, sample and reader names come
from the installed npe2 manifest."""

from __future__ import annotations

import warnings
from importlib import resources

import numpy as np
import pytest

pytest.importorskip("napari")
tifffile = pytest.importorskip("tifffile")
pytestmark = [
    pytest.mark.gui,
    # plugin code must not reach into napari's private attributes (napari warns, later refuses)
    pytest.mark.filterwarnings("error:Private attribute access:FutureWarning"),
]

from qtpy.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl  # noqa: E402
from qtpy.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402
from qtpy.QtWidgets import QApplication, QDialog, QDialogButtonBox, QRadioButton  # noqa: E402

from napari_deltamic._widget import DeltaMicWidget  # noqa: E402

SPACING = (2.0, 0.5, 0.25)
# an octahedron around (z, y, x) = (3, 4, 5) um, radius 1.5 um, written by hand (not by our code)
OCTA_VERTS = np.array([[4.5, 4, 5], [1.5, 4, 5], [3, 5.5, 5], [3, 2.5, 5], [3, 4, 6.5], [3, 4, 3.5]])
OCTA_FACES = np.array([[0, 2, 4], [0, 4, 3], [0, 3, 5], [0, 5, 2], [1, 4, 2], [1, 3, 4], [1, 5, 3], [1, 2, 5]])


def _menu_label(title: str, manifest) -> str:
    """How napari titles a plugin's menu item: the contribution's name, then the plugin's."""
    return f"{title} ({manifest.display_name})"


def _write_tif(path) -> np.ndarray:
    """A small ImageJ TIFF with voxel spacing SPACING (um), written with tifffile directly."""
    arr = np.random.default_rng(1).integers(0, 1000, size=(6, 9, 11)).astype(np.uint16)
    sz, sy, sx = SPACING
    tifffile.imwrite(
        path, arr, imagej=True, resolution=(1.0 / sx, 1.0 / sy), metadata={"spacing": sz, "unit": "um", "axes": "ZYX"}
    )
    return arr


def _write_obj(path) -> None:
    lines = [f"v {a} {b} {c}" for a, b, c in OCTA_VERTS] + [f"f {i + 1} {j + 1} {k + 1}" for i, j, k in OCTA_FACES]
    path.write_text("\n".join(lines) + "\n")


def _triangles(verts, faces) -> np.ndarray:
    """The mesh as a sorted triangle soup (independent of vertex order)."""
    tri = np.asarray(verts, dtype=np.float64)[np.asarray(faces)]
    return np.sort(tri.reshape(len(tri), 9), axis=0)


# ------------------------------------------------------------------------------ Plugins menu
def test_plugins_menu_item_opens_the_widget(
    make_napari_viewer, gui_manifest, gui_menu_action, gui_plugin_thread_guard, qtbot
):
    viewer = make_napari_viewer(show=True)
    widget_name = gui_manifest.contributions.widgets[0].display_name
    action = gui_menu_action(viewer.window.plugins_menu, _menu_label(widget_name, gui_manifest))
    action.trigger()  # what clicking Plugins > deltaMic inverse rendering does
    widgets = [w for w in viewer.window.dock_widgets.values() if isinstance(w, DeltaMicWidget)]
    assert len(widgets) == 1
    w = widgets[0]
    qtbot.waitUntil(w.isVisible, timeout=5000)
    # the widget follows the viewer's layers through the proxy napari gave it
    layer = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="vol", scale=SPACING)
    assert w.image_combo.layer() is not None and w.image_combo.currentText() == "vol"
    assert w.spacing_um() == SPACING
    viewer.layers.remove(layer)
    assert w.image_combo.layer() is None


def test_widget_opened_before_the_viewer_is_closed_leaves_nothing_running(make_napari_viewer, gui_open_widget):
    """Opening and closing without a fit: the close hooks fire harmlessly."""
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    viewer.close()
    assert not w.is_running


# ------------------------------------------------------------------------------ File > Open Sample


@pytest.mark.slow
@pytest.mark.parametrize("how", ["menu", "open_sample"])
def test_open_sample_then_the_widget_picks_it_up(
    make_napari_viewer, gui_manifest, gui_menu_action, gui_open_widget, sample_cache, qtbot, how
):
    import napari

    from napari_deltamic._sample_data import EMBRYO_PARAMS

    viewer = make_napari_viewer(show=True)
    sample = gui_manifest.contributions.sample_data[0]
    if how == "menu":
        gui_menu_action(viewer.window.file_menu, _menu_label(sample.display_name, gui_manifest)).trigger()
    else:
        viewer.open_sample(gui_manifest.name, sample.key)
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=120_000)
    assert [layer.name for layer in viewer.layers] == ["embryo (synthetic)", "ground truth mesh", "seeds"]
    image, surface, seeds = viewer.layers
    assert len(seeds.data) == 3  # one seed per cell
    assert isinstance(image, napari.layers.Image) and isinstance(surface, napari.layers.Surface)
    assert isinstance(seeds, napari.layers.Points)
    np.testing.assert_allclose(image.scale, EMBRYO_PARAMS["spacing_um"])
    lo, hi = image.extent.world
    assert np.all(surface.vertices >= lo) and np.all(surface.vertices <= hi)  # um, inside the stack

    w = gui_open_widget(viewer)
    assert w.image_combo.currentText() == image.name
    assert w.spacing_um() == pytest.approx(tuple(EMBRYO_PARAMS["spacing_um"]))
    w.seed_source.setCurrentText("Points")
    assert w.seed_combo.currentText() == seeds.name


# ------------------------------------------------------------------------------ drag and drop
class _ReaderDialogAnswer:
    """Answers napari's "Choose reader" dialog as a user would: notes the readers offered and
    clicks the one named ``pick`` (or Cancel if it is not offered), then OK."""

    def __init__(self, qtbot, pick: str):
        self.qtbot, self.pick = qtbot, pick
        self.offered: list[str] | None = None
        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(self._poll)
        self.timer.start()

    def _poll(self) -> None:
        candidates = [QApplication.activeModalWidget(), *QApplication.topLevelWidgets()]
        for dlg in candidates:
            if isinstance(dlg, QDialog) and dlg.isVisible() and dlg.windowTitle() == "Choose reader":
                break
        else:
            return
        self.timer.stop()
        buttons = dlg.findChildren(QRadioButton)
        self.offered = [b.text() for b in buttons]
        box = dlg.findChild(QDialogButtonBox)
        chosen = [b for b in buttons if b.text() == self.pick]
        if not chosen:
            box.button(QDialogButtonBox.Cancel).click()
            return
        self.qtbot.mouseClick(chosen[0], Qt.LeftButton)
        assert chosen[0].isChecked()
        box.button(QDialogButtonBox.Ok).click()


def _drop(viewer, path) -> None:
    """Drag ``path`` onto the viewer's canvas area and drop it (the events a file manager sends)."""
    target = viewer.window._qt_viewer  # napari's drop target (test code: the real viewer, no proxy)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    pos = QPointF(10.0, 10.0)
    enter = QDragEnterEvent(pos.toPoint(), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(target, enter)
    assert enter.isAccepted(), "the viewer refused the drag"
    QApplication.sendEvent(target, QDropEvent(pos, Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))


def _check_layer(layer, suffix, arr=None) -> None:
    """Our reader's result: an Image with scale = spacing, or a Surface with vertices in um."""
    import napari

    if suffix == ".tif":
        assert isinstance(layer, napari.layers.Image)
        np.testing.assert_allclose(layer.scale, SPACING, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(layer.data), arr)
    else:
        assert isinstance(layer, napari.layers.Surface)
        np.testing.assert_allclose(layer.scale, 1.0)
        # the file's columns are (z, y, x) in um: vertices as written
        np.testing.assert_allclose(
            _triangles(layer.vertices, layer.faces), _triangles(OCTA_VERTS, OCTA_FACES), atol=1e-6
        )


@pytest.mark.parametrize("suffix", [".tif", ".obj"])
def test_drag_and_drop_offers_our_reader(make_napari_viewer, gui_manifest, qtbot, tmp_path, suffix):
    import npe2
    from napari.errors import MultipleReaderError

    path = tmp_path / f"cells{suffix}"
    arr = _write_tif(path) if suffix == ".tif" else _write_obj(path)
    readers = {r.plugin_name for r in npe2.PluginManager.instance().iter_compatible_readers([str(path)])}
    assert gui_manifest.name in readers
    if suffix == ".tif":
        assert "napari" in readers  # napari's builtin reader also takes TIFFs: the user chooses
    viewer = make_napari_viewer(show=True)

    # viewer.open without a plugin: napari asks to choose when several readers qualify
    if len(readers) > 1:
        with pytest.raises(MultipleReaderError) as info:
            viewer.open(str(path), plugin=None)
        assert gui_manifest.name in info.value.available_plugins
        assert len(viewer.layers) == 0
    else:
        viewer.open(str(path), plugin=None)
        _check_layer(viewer.layers[-1], suffix, arr)
        viewer.layers.clear()

    # the same file dropped on the viewer: the reader dialog lists our reader; the user picks it
    answer = _ReaderDialogAnswer(qtbot, pick=gui_manifest.display_name)
    _drop(viewer, path)
    answer.timer.stop()
    if len(readers) > 1:
        assert answer.offered is not None, "napari did not ask which reader to use"
        assert gui_manifest.display_name in answer.offered
    assert len(viewer.layers) == 1
    _check_layer(viewer.layers[-1], suffix, arr)

    # and naming our plugin explicitly
    viewer.layers.clear()
    viewer.open(str(path), plugin=gui_manifest.name)
    assert len(viewer.layers) == 1
    _check_layer(viewer.layers[-1], suffix, arr)


# ------------------------------------------------------------------------------ saving
def _read_back(path, suffix):
    """Vertices, faces (and labels) of a written mesh, parsed without deltamic code."""
    if suffix == ".rec":
        lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
        tok = " ".join(lines).split()
        nv = int(tok[0])
        verts = np.asarray(tok[1 : 1 + 3 * nv], dtype=np.float64).reshape(nv, 3)
        nf = int(tok[1 + 3 * nv])
        f = np.asarray(tok[2 + 3 * nv : 2 + 3 * nv + 5 * nf], dtype=np.int64).reshape(nf, 5)
        return verts, f[:, :3], f[:, 3:]
    trimesh = pytest.importorskip("trimesh")
    m = trimesh.load(path, process=False, force="mesh")
    return np.asarray(m.vertices), np.asarray(m.faces), None


@pytest.mark.parametrize("api", ["layers.save", "napari.save_layers"])
@pytest.mark.parametrize("suffix", [".obj", ".ply", ".rec"])
def test_saving_a_surface_with_our_writer_round_trips(make_napari_viewer, gui_manifest, tmp_path, suffix, api):
    import napari

    viewer = make_napari_viewer(show=True)
    with resources.as_file(resources.files("deltamic_core") / "data" / "Sample01_007.rec") as rec:
        viewer.open(str(rec), plugin=gui_manifest.name)
    layer = viewer.layers[-1]
    labels = np.asarray(layer.metadata["labels"])
    viewer.layers.selection = {layer}
    out = tmp_path / f"cells{suffix}"
    # our writer by name, and napari's own choice (plugin=None) for the same layer type/extension
    for plugin in (gui_manifest.name, None):
        if out.exists():
            out.unlink()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if api == "layers.save":
                written = viewer.layers.save(str(out), selected=True, plugin=plugin)
            else:
                written = napari.save_layers(str(out), [layer], plugin=plugin)
        # an .obj cannot hold the cell labels: the user is told
        dropped = [w for w in caught if "labels" in str(w.message)]
        assert len(dropped) == (1 if suffix == ".obj" else 0), [str(w.message) for w in caught]
        assert [str(p) for p in written] == [str(out)]
        verts, faces, labels_back = _read_back(out, suffix)
        np.testing.assert_allclose(_triangles(verts, faces), _triangles(layer.vertices, layer.faces), atol=1e-4)
        assert len(faces) == len(layer.faces)
        if suffix == ".rec":
            np.testing.assert_array_equal(faces, np.asarray(layer.faces))
            np.testing.assert_array_equal(labels_back, labels)
    # reading the file back with our reader gives the same layer
    viewer.open(str(out), plugin=gui_manifest.name)
    back = viewer.layers[-1]
    np.testing.assert_allclose(
        _triangles(back.vertices, back.faces), _triangles(layer.vertices, layer.faces), atol=1e-4
    )
