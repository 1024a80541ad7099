"""Small Qt building blocks for the dock widget: a layer picker and a live loss plot."""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSizePolicy, QVBoxLayout, QWidget


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
    """Loss against iteration on a log scale, redrawn lazily (matplotlib FigureCanvas)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), dpi=90, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.canvas.setFixedHeight(150)
        self.ax = self.figure.add_subplot(111)
        self._style()
        (self._line,) = self.ax.plot([], [], color="#ffb000", lw=1.5)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.iterations: list[int] = []
        self.losses: list[float] = []

    def _style(self) -> None:
        ax = self.ax
        ax.set_facecolor("#262930")
        for side in ax.spines.values():
            side.set_color("#9a9a9a")
        ax.tick_params(colors="#d0d0d0", labelsize=7)
        ax.set_xlabel("iteration", color="#d0d0d0", fontsize=8)
        ax.set_ylabel("loss", color="#d0d0d0", fontsize=8)
        self.figure.subplots_adjust(left=0.2, right=0.97, top=0.95, bottom=0.25)

    def clear(self) -> None:
        self.iterations.clear()
        self.losses.clear()
        self._line.set_data([], [])
        self.canvas.draw_idle()

    def append(self, iteration: int, loss: float) -> None:
        self.extend([(iteration, loss)])

    def extend(self, points) -> None:
        """Add (iteration, loss) points (non-finite losses are skipped) and redraw once."""
        n = len(self.losses)
        for iteration, loss in points:
            if math.isfinite(loss):
                self.iterations.append(int(iteration))
                self.losses.append(float(loss))
        if len(self.losses) == n:
            return
        self._line.set_data(self.iterations, self.losses)
        ax = self.ax
        ax.set_xlim(0, max(1, self.iterations[-1]))
        lo, hi = min(self.losses), max(self.losses)
        if lo > 0:
            ax.set_yscale("log")
            ax.set_ylim(lo / 1.2, hi * 1.2)
        else:
            ax.set_yscale("linear")
            pad = 0.05 * (hi - lo) + 1e-12
            ax.set_ylim(lo - pad, hi + pad)
        self.canvas.draw_idle()

    def values(self) -> np.ndarray:
        return np.asarray(self.losses, dtype=np.float64)


__all__ = ["LayerCombo", "LossPlot", "spin"]
