"""Time-lapse in the widget: propagate the current frame's fit through a (T, Z, Y, X) image.

The user fits the current frame (Run), then presses Propagate: the pipeline's time-lapse rule
(``deltamic_core.pipeline.track.propagate_steps``, the one ``deltamic track`` follows) fits
the later frames forwards and the earlier ones backwards, each starting from its neighbour's
fitted mesh, in a thread worker. Progress goes to the panel and napari's activity dock; Stop
ends it after the current iteration and keeps the frames already fitted. The results are napari
data indexed by time: one Surface layer whose vertices carry a leading t coordinate (napari
shows the faces of the current time point) and one (T, Z, Y, X) Labels layer whose
``features`` are the measurements of the frame on screen (all frames in ``metadata["tracks"]``).
"""

from __future__ import annotations

import threading

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ._layers import (
    CELL_COLORMAP,
    image_origin,
    labels_colormap,
    labels_features,
    units_for,
    vertex_cell_ids,
)
from ._notify import _guarded, _show_error

#: Surface layer metadata: per frame t, the (F, 2) face labels of that frame's mesh
FRAME_LABELS_KEY = "frame_labels"


class TimelapsePanel(QGroupBox):
    """Propagate / Stop and what the propagation is doing (shown for time series only)."""

    def __init__(self):
        super().__init__("Time-lapse")
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip(
            "fit every other frame of the time series, each starting from its neighbour's result "
            "(first Run on the current frame)"
        )
        self.propagate_stop_button = QPushButton("Stop")
        self.propagate_stop_button.setEnabled(False)
        row.addWidget(self.propagate_button)
        row.addWidget(self.propagate_stop_button)
        layout.addLayout(row)
        self.propagate_status = QLabel("")
        self.propagate_status.setWordWrap(True)
        layout.addWidget(self.propagate_status)


def propagate_values(stack, spacing, origin, mesh, psf, config, t0: int, holder: dict):
    """Worker body: ``("frame", t, mesh, label image, cell rows)`` for frame ``t0`` and each
    frame fitted after it, ``("step", t, iteration, loss)`` after every iteration."""
    from deltamic_core.geometry import label_image
    from deltamic_core.pipeline.outputs import cell_table
    from deltamic_core.pipeline.track import propagate_steps

    shape = tuple(stack.shape[-3:])
    yield ("frame", int(t0), mesh, label_image(mesh, shape, spacing, origin), cell_table(mesh))
    for t, step, result in propagate_steps(stack, spacing, mesh, psf, config, t0=t0, origin_um=origin, holder=holder):
        if step is not None:
            yield ("step", int(t), int(step.iteration), float(step.loss))
        else:
            m = result.mesh
            yield ("frame", int(t), m, label_image(m, shape, spacing, origin), cell_table(m))


class Propagator:
    """The widget's time-lapse part: its panel, the propagation worker and the result layers."""

    def __init__(self, widget, panel: TimelapsePanel):
        self.w = widget
        self.panel = panel
        self.worker = None
        self.fit_frame: int | None = None  # the frame the widget's last Run fitted
        self.frames: dict[int, tuple] = {}  # t -> (mesh, cell rows) of the propagation shown
        self.surface_layer = None
        self.labels_layer = None
        self._holder: dict = {}
        self._done = threading.Event()
        self._activity = None
        self._timer = None
        self._state = None
        panel.propagate_button.clicked.connect(self.propagate)
        panel.propagate_stop_button.clicked.connect(self.stop)
        widget.run_button.clicked.connect(self._remember_fit_frame)  # after the widget's own slot
        widget.image_combo.currentIndexChanged.connect(self._show_for_image)
        widget.viewer.dims.events.current_step.connect(self._show_frame_features)
        self._show_for_image()

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def _current_frame(self) -> int:
        dims = self.w.viewer.dims
        return int(dims.current_step[0]) if dims.ndim == 4 else 0

    def _show_for_image(self, *args) -> None:
        layer = self.w.image_combo.layer()
        self.panel.setVisible(layer is not None and layer.ndim == 4)

    def _remember_fit_frame(self, *args) -> None:
        if self.w.is_running:  # the Run click started a fit on this frame
            self.fit_frame = self._current_frame()

    # ------------------------------------------------------------------ start / stop
    @_guarded
    def propagate(self, *args):
        """Fit every other frame from the current frame's fitted mesh (in a worker). Returns it."""
        w = self.w
        if self.is_running:
            raise ValueError("a propagation is already running: stop it first")
        if w.is_running:
            raise ValueError("a fit is running: let it finish (or Stop it), then Propagate")
        image = w._image_layer()
        if image.ndim != 4 or image.data.shape[0] < 2:
            raise ValueError(
                f"Propagate needs a time series: image layer {image.name!r} has no time axis with 2 or more frames"
            )
        t0 = self._current_frame()
        if self.fit_frame is None:
            raise ValueError(f"fit frame {t0} first (Run), then Propagate from it")
        if self.fit_frame != t0:
            raise ValueError(
                f"the fit layer holds the fit of frame {self.fit_frame}, not of frame {t0} on screen: "
                f"go back to frame {self.fit_frame}, or Run on frame {t0}"
            )
        mesh = w.result_mesh()
        spacing, origin = w.spacing_um(), image_origin(image)
        psf, config = w.make_psf(), w.fit_config()
        from napari.qt.threading import create_worker

        n = int(image.data.shape[0])
        self.frames = {}
        self._image = image
        self._n_frames = n
        self._iterations = int(config.total_iterations)
        self._labels_data = np.zeros((n, *image.data.shape[-3:]), dtype=np.int32)
        self._holder = {}
        worker = create_worker(
            propagate_values, image.data, spacing, origin, mesh, psf, config, t0, self._holder, _start_thread=False
        )
        worker.yielded.connect(self._on_value)
        worker.errored.connect(lambda exc: _show_error(f"propagation failed: {exc}"))
        worker.finished.connect(self._on_finished)
        self._done = threading.Event()
        worker.finished.connect(self._done.set, Qt.DirectConnection)
        self.worker = worker
        self._start_activity((n - 1) * self._iterations)
        self.panel.propagate_status.setText(f"propagating from frame {t0} through {n} frames...")
        for b in (self.panel.propagate_button, w.run_button):
            b.setEnabled(False)
        self.panel.propagate_stop_button.setEnabled(True)
        worker.start()
        return worker

    def stop(self, *args) -> None:
        """Stop after the current iteration; the frames already fitted stay."""
        if self.worker is not None:
            self.panel.propagate_status.setText("stopping after this iteration...")
            self.worker.quit()

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Stop and wait for the worker thread (no Qt events processed). True if it has ended."""
        worker = self.worker
        self._end_activity()
        if worker is None:
            return True
        try:
            worker.yielded.disconnect(self._on_value)
        except (TypeError, RuntimeError):
            pass
        worker.quit()
        if self._done.wait(timeout_s):
            self.worker = None
            self._holder.clear()
            return True
        return False

    def _on_finished(self) -> None:
        self.worker = None
        self._holder.clear()
        self._end_activity()
        if self.w._closing:
            return
        done = len(self.frames)
        if done == self._n_frames:
            text = f"done: {done} frames fitted"
        else:
            text = f"stopped: {done} of {self._n_frames} frames fitted (t = {sorted(self.frames)})"
        self.panel.propagate_status.setText(text)
        self.panel.propagate_stop_button.setEnabled(False)
        for b in (self.panel.propagate_button, self.w.run_button):
            b.setEnabled(True)

    # ------------------------------------------------------------------ progress
    def _start_activity(self, total: int) -> None:
        from napari.utils import progress

        self._end_activity()
        self._activity = progress(total=max(int(total), 1), desc="deltaMic propagate")
        self._state = None
        # napari's bar processes Qt events when it updates: from a timer, not from a worker's slot
        self._timer = QTimer(self.w)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._show_activity)
        self._timer.start()

    def _show_activity(self) -> None:
        bar, state = self._activity, self._state
        if bar is None or state is None:
            return
        count, text = state
        if count > bar.n:
            bar.set_description(text)
            bar.update(count - bar.n)

    def _end_activity(self) -> None:
        if self._timer is not None:
            try:
                self._timer.stop()
            except RuntimeError:  # deleted with the widget
                pass
        self._timer = None
        bar, self._activity = self._activity, None
        if bar is not None:
            bar.close()

    # ------------------------------------------------------------------ results
    def _on_value(self, value) -> None:
        if self.w._closing:
            return
        if value[0] == "step":
            _, t, iteration, loss = value
            fitted = len(self.frames) - 1  # frames done besides the starting one
            count = fitted * self._iterations + iteration
            text = f"deltaMic propagate: frame {t}, loss {loss:.4g}"
            self._state = (count, text)
            self.panel.propagate_status.setText(
                f"frame {t} ({fitted + 1} of {self._n_frames - 1}): iteration {iteration}/{self._iterations}, "
                f"loss {loss:.4g}"
            )
            return
        _, t, mesh, labels, rows = value
        self.frames[t] = (mesh, rows)
        self._labels_data[t] = labels
        self._show_results()

    def _show_results(self) -> None:
        image = self._image
        viewer = self.w.viewer
        t_scale, t_origin = float(image.scale[0]), float(image.translate[0])
        n_cells = max(max(int(m.n_cells) for m, _ in self.frames.values()), 1)
        verts, faces, values, frame_labels = [], [], [], {}
        offset = 0
        for t in sorted(self.frames):
            mesh = self.frames[t][0]
            tcol = np.full((len(mesh.verts), 1), t_origin + t_scale * t)
            verts.append(np.hstack([tcol, mesh.verts]).astype(np.float32))
            faces.append(np.asarray(mesh.faces, dtype=np.int64) + offset)
            values.append(vertex_cell_ids(mesh))
            if mesh.labels is not None:
                frame_labels[t] = mesh.labels.copy()
            offset += len(mesh.verts)
        data = (np.concatenate(verts), np.concatenate(faces), np.concatenate(values))
        meta = {FRAME_LABELS_KEY: frame_labels, "frames": sorted(self.frames)}
        name = f"{image.name} track"
        layer = self.surface_layer
        if layer is not None and layer in viewer.layers:
            layer.data = data
            layer.metadata = meta
            layer.contrast_limits = (0.0, float(n_cells))
        else:
            self.surface_layer = viewer.add_surface(
                data,
                name=name,
                metadata=meta,
                colormap=CELL_COLORMAP,
                contrast_limits=(0.0, float(n_cells)),
                units=units_for(4),
                opacity=0.7,
                blending="translucent",
            )
        scale = (t_scale, *image.scale[-3:])
        translate = (t_origin, *image_origin(image))
        tracks = [{"t": t, **r} for t in sorted(self.frames) for r in self.frames[t][1]]
        layer = self.labels_layer
        if layer is not None and layer in viewer.layers:
            layer.data = self._labels_data
            layer.refresh()
        else:
            layer = self.labels_layer = viewer.add_labels(
                self._labels_data,
                name=f"{image.name} track cells",
                scale=scale,
                translate=translate,
                units=units_for(4),
            )
        layer.colormap = labels_colormap(n_cells)
        layer.metadata = {**layer.metadata, "tracks": tracks}
        self._show_frame_features()

    def _show_frame_features(self, *args) -> None:
        """The Labels layer's features: the measurements of the frame on screen (none if unfitted)."""
        layer = self.labels_layer
        if layer is None or layer not in self.w.viewer.layers:
            return
        t = self._current_frame()
        rows = self.frames.get(t, (None, []))[1]
        layer.features = labels_features(rows)
