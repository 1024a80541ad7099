"""Small Qt building blocks for the dock widget: a layer picker and a live loss plot."""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSizePolicy, QWidget


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of some types, kept in sync with the layer list.

    Items are layer names; :meth:`layer` returns the layer object (or None). The selection
    survives insertions, removals and renames.
    """

    def __init__(self, viewer, layer_types: tuple, parent=None):
        super().__init__(parent)
        self._viewer = viewer
        self._types = tuple(layer_types)
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.reordered):
            ev.connect(self.refresh)
        events.inserted.connect(self._watch_name)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def set_layer_types(self, layer_types: tuple) -> None:
        self._types = tuple(layer_types)
        self.refresh()

    def _watch_name(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)

    def _matching(self) -> list:
        return [layer for layer in self._viewer.layers if isinstance(layer, self._types)]

    def refresh(self, event=None) -> None:
        current = self.layer()
        layers = self._matching()
        self.blockSignals(True)
        try:
            self.clear()
            for layer in layers:
                self.addItem(layer.name)
            if current is not None and current in layers:
                self.setCurrentIndex(layers.index(current))
            elif layers:
                # default to the most recently added layer, as napari's own pickers do
                self.setCurrentIndex(len(layers) - 1)
        finally:
            self.blockSignals(False)
        if self.layer() is not current:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self):
        """The selected layer, or None."""
        name = self.currentText()
        if not name or name not in self._viewer.layers:
            return None
        layer = self._viewer.layers[name]
        return layer if isinstance(layer, self._types) else None

    def set_layer(self, layer) -> None:
        idx = self.findText(layer.name)
        if idx < 0:
            raise ValueError(f"layer {layer.name!r} is not one of {[t.__name__ for t in self._types]} in the viewer")
        self.setCurrentIndex(idx)


def spin(
    value: float,
    lo: float,
    hi: float,
    *,
    decimals: int = 3,
    step: float | None = None,
    suffix: str = "",
    tooltip: str = "",
) -> QDoubleSpinBox:
    """A QDoubleSpinBox with its range, precision and unit suffix set."""
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step if step is not None else 10 ** (-decimals + 1))
    box.setValue(value)
    if suffix:
        box.setSuffix(f" {suffix}")
    if tooltip:
        box.setToolTip(tooltip)
    box.setKeyboardTracking(False)  # emit valueChanged on commit, not on every keystroke
    return box


class LossPlot(QWidget):
    """Loss against iteration (log scale while every loss is positive), drawn with QPainter.

    Cheap enough to redraw after every step: a matplotlib figure's redraw took 0.1-0.6 s of the
    main thread on the busy 2-core machine, holding the GIL, which starved the fit's thread
    (the sample's fit ran at 0.25-0.6 iterations/s in napari against 5-10 alone).
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setFixedHeight(150)
        self.setMinimumWidth(160)
        self.iterations: list[int] = []
        self.losses: list[float] = []

    def clear(self) -> None:
        self.iterations.clear()
        self.losses.clear()
        self.update()

    def append(self, iteration: int, loss: float) -> None:
        self.extend([(iteration, loss)])

    def extend(self, points) -> None:
        """Add (iteration, loss) points (non-finite losses are skipped); repainted once."""
        for iteration, loss in points:
            if math.isfinite(loss):
                self.iterations.append(int(iteration))
                self.losses.append(float(loss))
        self.update()

    def redraw(self) -> None:
        self.update()

    def values(self) -> np.ndarray:
        return np.asarray(self.losses, dtype=np.float64)

    def paintEvent(self, event) -> None:
        from qtpy.QtCore import QPointF, QRectF, Qt
        from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF

        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.fillRect(self.rect(), QColor("#262930"))
        box = QRectF(52.0, 8.0, max(self.width() - 62.0, 10.0), max(self.height() - 34.0, 10.0))
        painter.setPen(QPen(QColor("#9a9a9a"), 1.0))
        painter.drawRect(box)
        font = painter.font()
        font.setPointSizeF(7.5)
        painter.setFont(font)
        painter.setPen(QColor("#d0d0d0"))
        bottom = QRectF(box.left(), box.bottom() + 2, box.width(), 16)
        painter.drawText(bottom, int(Qt.AlignHCenter | Qt.AlignTop), "iteration")
        if not self.losses:
            painter.end()
            return
        its = np.asarray(self.iterations, dtype=np.float64)
        vals = np.asarray(self.losses, dtype=np.float64)
        log = bool(vals.min() > 0)
        y = np.log10(vals) if log else vals
        lo, hi = float(y.min()), float(y.max())
        pad = 0.05 * (hi - lo) + (0.05 if log else 1e-12)
        lo, hi = lo - pad, hi + pad
        x_max = max(1.0, float(its[-1]))
        xs = box.left() + box.width() * its / x_max
        ys = box.bottom() - box.height() * (y - lo) / (hi - lo)
        painter.drawText(bottom, int(Qt.AlignRight | Qt.AlignTop), f"{int(x_max)}")
        painter.drawText(bottom, int(Qt.AlignLeft | Qt.AlignTop), "0")
        side = QRectF(0.0, box.top() - 2, box.left() - 4, 14)
        top_value, bottom_value = (10**hi, 10**lo) if log else (hi, lo)
        painter.drawText(side, int(Qt.AlignRight | Qt.AlignTop), f"{top_value:.3g}")
        side.moveTop(box.bottom() - 12)
        painter.drawText(side, int(Qt.AlignRight | Qt.AlignBottom), f"{bottom_value:.3g}")
        side.moveTop(box.center().y() - 7)
        painter.drawText(side, int(Qt.AlignRight | Qt.AlignVCenter), "loss (log)" if log else "loss")
        painter.setPen(QPen(QColor("#ffb000"), 1.5))
        painter.drawPolyline(QPolygonF([QPointF(float(a), float(b)) for a, b in zip(xs, ys)]))
        painter.end()


__all__ = ["LayerCombo", "LossPlot", "spin"]
