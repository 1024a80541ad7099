"""The dock in a shown viewer under Xvfb: it fits a laptop screen without horizontal scrolling,
and an image opened by napari's builtin reader (scale 1, no units) gets its voxel size from the
file, with where it came from said and a loud warning for an axis the file does not give."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
tifffile = pytest.importorskip("tifffile")
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("error:Private attribute access:FutureWarning"),
]

from qtpy.QtWidgets import QApplication, QScrollArea  # noqa: E402

SPACING = (2.0, 0.5, 0.25)


@pytest.fixture
def gui_warnings(monkeypatch):
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown.append(str(msg)))
    return shown


def _write_imagej_tif(path, *, z_spacing: bool = True) -> None:
    arr = np.random.default_rng(1).integers(0, 1000, size=(6, 9, 11)).astype(np.uint16)
    sz, sy, sx = SPACING
    meta = {"unit": "um", "axes": "ZYX", **({"spacing": sz} if z_spacing else {})}
    tifffile.imwrite(path, arr, imagej=True, resolution=(1.0 / sx, 1.0 / sy), metadata=meta)


@pytest.mark.parametrize("size", [(1280, 800), (1600, 1000)])
def test_dock_has_no_horizontal_scroll_bar(make_napari_viewer, gui_open_widget, qtbot, size, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(*size)
    path = tmp_path / "stack.tif"
    _write_imagej_tif(path)
    viewer.open(str(path), plugin="napari-deltamic")
    w = gui_open_widget(viewer)
    for page in range(w.psf_pages.count()):  # the widest PSF page shown too
        w.psf_combo.setCurrentIndex(page)
        QApplication.processEvents()
        scroll = w.findChild(QScrollArea)
        content = scroll.widget()
        qtbot.waitUntil(lambda s=scroll: s.viewport().width() > 0, timeout=5000)
        assert not scroll.horizontalScrollBar().isVisible(), (
            f"page {page}: content needs {content.minimumSizeHint().width()} px, the dock shows "
            f"{scroll.viewport().width()} px"
        )
        assert content.minimumSizeHint().width() <= scroll.viewport().width()
        # every control is inside the visible width
        for child in (w.spacing_boxes[-1], w.place_button, w.backend_combo, w.open_result_button):
            right = child.mapTo(content, child.rect().topRight()).x()
            assert right <= scroll.viewport().width(), child
    # the dock leaves most of the window to the canvas
    assert w.width() <= 0.4 * size[0]


def test_spacing_of_a_builtin_reader_layer_comes_from_the_file(
    make_napari_viewer, gui_open_widget, qtbot, tmp_path, gui_warnings, gui_errors
):
    path = tmp_path / "calibrated.tif"
    _write_imagej_tif(path)
    viewer = make_napari_viewer(show=True)
    w = gui_open_widget(viewer)
    [layer] = viewer.open(str(path), plugin="napari")  # napari's builtin reader: scale 1
    assert w.image_combo.currentText() == layer.name
    qtbot.waitUntil(lambda: w.spacing_um() == pytest.approx(SPACING), timeout=30_000)
    np.testing.assert_allclose(layer.scale[-3:], SPACING)  # the layer now overlays in um
    assert "file" in w.spacing_note.text() and "metadata" in w.spacing_note.text()
    assert [str(u) for u in layer.units[-3:]] == ["micrometer"] * 3
    assert gui_warnings == [] and gui_errors == []

    # a file without a z step: y and x from the file, z assumed and said loudly
    bare = tmp_path / "no_z.tif"
    _write_imagej_tif(bare, z_spacing=False)
    [layer2] = viewer.open(str(bare), plugin="napari")
    w.image_combo.set_layer(layer2)  # the user picks it
    qtbot.waitUntil(lambda: len(gui_warnings) > 0, timeout=30_000)
    assert "z" in gui_warnings[0] and "no_z.tif" in gui_warnings[0]
    assert w.spacing_um()[1:] == pytest.approx(SPACING[1:])
    assert "assumed" in w.spacing_note.text()
    assert gui_errors == []
