"""The deltaMic dock widget: seed meshes, pick a PSF, fit by inverse rendering, measure.

The widget is thin: its panels (:mod:`._panels`) turn the controls into a
``deltamic_core.pipeline.FitJob`` (the same job ``deltamic fit`` builds from its command line,
with the same defaults), the pipeline checks it and builds the fit, and the runner
(:mod:`._runner`) drives the fit in a thread worker; meshes, PSFs, rendering, fitting and
measurements all come from ``deltamic_core``.

World coordinates are micrometres: the Image layer's ``scale`` is its voxel spacing and the
Surface layers hold vertices in um, so image and meshes overlay without further transforms.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QFileDialog, QFrame, QScrollArea, QVBoxLayout, QWidget

from ._layers import (
    SPACING_KEY,
    UNITS_ZYX,
    VOXEL_UNITS_KEY,
    image_origin,
    image_spacing,
    labels_colormap,
    labels_features,
    layer_to_mesh,
    mesh_to_layer_data,
    units_for,
    vertex_cell_ids,
)
from ._panels import AUTO_SEEDS, FitPanel, ImagePanel, PSFPanel, ResultsPanel, SeedPanel
from ._runner import FitRunner, Step
from ._seeds import ClickSeeder


def _show_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(f"deltaMic: {message}")


def _show_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(f"deltaMic: {message}")


@contextlib.contextmanager
def _input_warnings_shown():
    """The pipeline's warnings about the user's input (overlapping seeds shrunk, a mesh repaired,
    ...) as napari notifications, on the Create mesh and Run paths; other warnings go on as
    usual. Main thread only."""
    from deltamic_core.pipeline.errors import InputWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        yield
    for w in caught:
        if issubclass(w.category, InputWarning):
            _show_warning(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _show_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(f"deltaMic: {message}")


def _guarded(method):
    """Run a button handler; any exception becomes an error notification, never a crash."""

    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown to the user, the viewer keeps running
            _show_error(str(exc) or type(exc).__name__)
            return None

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


#: the panels' controls, reachable on the widget itself (w.run_button, w.sigma_boxes, ...)
_CONTROLS = {
    "image_panel": ("image_combo", "spacing_boxes", "spacing_note"),
    "seed_panel": (
        "stain_combo",
        "seed_source",
        "seed_combo",
        "click_button",
        "seed_status",
        "radius_box",
        "edge_box",
        "seed_button",
        "place_button",
    ),
    "psf_panel": (
        "psf_combo",
        "psf_pages",
        "sigma_voxel",
        "sigma_boxes",
        "gl_boxes",
        "hanser_boxes",
        "zernike_edit",
        "bead_combo",
        "learn_psf",
        "preview_button",
    ),
    "fit_panel": (
        "iter_box",
        "levels_edit",
        "step_box",
        "smooth_box",
        "loss_combo",
        "device_combo",
        "backend_combo",
        "run_button",
        "stop_button",
        "copy_button",
        "defaults_button",
        "progress",
        "status_label",
        "loss_plot",
    ),
    "results_panel": (
        "export_button",
        "labels_button",
        "measure_button",
        "table",
        "csv_button",
        "save_all_button",
        "open_result_button",
    ),
}


class DeltaMicWidget(QWidget):
    """Dock widget: image + seeds + PSF -> fitted cell meshes, labels and measurements."""

    #: the Surface layer is refreshed at most this often during a fit (seconds)
    update_interval_s = 0.1

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        import napari

        self.viewer = napari_viewer
        self._layers = napari.layers
        self._closing = False
        self._last_step: Step | None = None
        self._last_update = 0.0
        self._fit_layer = None
        self.first_update_s: float | None = None  # time from Run to the first surface update
        self.step_times: list[float] = []
        self.measurements: list[dict] = []
        self.runner = FitRunner(self._on_step, self._on_error, self._on_finished)

        self.image_panel = ImagePanel(self.viewer, self._layers)
        self.seed_panel = SeedPanel(self.viewer, self._layers)
        self.psf_panel = PSFPanel(self.viewer, self._layers)
        self.fit_panel = FitPanel()
        self.results_panel = ResultsPanel()
        for panel, names in _CONTROLS.items():
            for name in names:
                setattr(self, name, getattr(getattr(self, panel), name))
        self.seeder = ClickSeeder(self)
        self._connect()

        # the controls scroll, so the dock fits small screens
        content = QWidget()
        layout = QVBoxLayout(content)
        for panel in _CONTROLS:
            layout.addWidget(getattr(self, panel))
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setWidget(content)
        self._scroll = scroll
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self._on_image_changed()
        from ._settings import load_settings

        self._default_settings = self.settings()
        self.apply_settings(load_settings())  # remembered from the last session
        self._install_close_hooks()
        self._fit_width()
        self.psf_combo.currentIndexChanged.connect(self._fit_width)

    def _fit_width(self, *args) -> None:
        """Never narrower than the controls (plus the vertical scroll bar): the dock gets their
        width, so nothing hides behind a horizontal scroll bar."""
        content = self._scroll.widget()
        bar = self._scroll.verticalScrollBar().sizeHint().width()
        self._scroll.setMinimumWidth(content.minimumSizeHint().width() + bar + 2)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._fit_width()  # the style (fonts, margins) is final once shown

    def _connect(self) -> None:
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        for b in self.spacing_boxes:
            b.valueChanged.connect(self._on_spacing_edited)
        self.seed_button.clicked.connect(self.create_initial_mesh)
        self.click_button.clicked.connect(self.click_to_seed)
        # the seed rules depend on these too: the click seeds' mesh follows them
        for box in (self.radius_box, self.edge_box):
            box.valueChanged.connect(self._seed_settings_changed)
        self.stain_combo.currentIndexChanged.connect(self._seed_settings_changed)
        self.place_button.clicked.connect(self.place_on_image_grid)
        self.preview_button.clicked.connect(self.preview)
        self.run_button.clicked.connect(self.run_fit)
        self.stop_button.clicked.connect(self.stop_fit)
        self.export_button.clicked.connect(self._export_dialog)
        self.labels_button.clicked.connect(self.make_labels)
        self.measure_button.clicked.connect(self.measure)
        self.csv_button.clicked.connect(self._csv_dialog)
        self.save_all_button.clicked.connect(self._save_all_dialog)
        self.open_result_button.clicked.connect(self._open_result_dialog)
        self.copy_button.clicked.connect(self.copy_command)
        self.defaults_button.clicked.connect(self.restore_defaults)

    # ------------------------------------------------------------------ image and spacing
    def _image_layer(self):
        layer = self.image_combo.layer()
        if layer is None:
            raise ValueError("no Image layer: open a 3D stack (z, y, x) first")
        if layer.rgb or layer.ndim not in (3, 4):
            raise ValueError(
                f"image layer {layer.name!r} has {layer.ndim} dimensions; a (Z, Y, X) stack or a (T, Z, Y, X) "
                "time series is needed"
            )
        return layer

    def _on_image_changed(self, *args) -> None:
        layer = self.image_combo.layer()
        if layer is None or layer.ndim < 3:
            self.image_panel.show_note("")
            return
        self.image_panel.show_spacing(layer.scale[-3:])
        meta = layer.metadata or {}
        if SPACING_KEY in meta:  # read by this plugin (or its sample/result): the scale is the spacing
            assumed = [a for a, src in zip("zyx", meta.get("spacing_sources") or ()) if src == "default"]
            note = "voxel size from the file's metadata (the layer's scale)"
            if assumed:
                note += f"; {', '.join(assumed)} assumed 1 um (not in the file): check it"
            typed = [a for a, src in zip("zyx", meta.get("spacing_sources") or ()) if src == "typed"]
            if typed:
                note += f"; {', '.join(typed)} typed in the widget"
            self.image_panel.show_note(note)
            return
        path = self._image_file(layer)
        unscaled = np.allclose(np.asarray(layer.scale[-3:], dtype=float), 1.0)
        if path and Path(path).suffix.lower() in (".tif", ".tiff") and unscaled:
            self._read_file_spacing(layer, path)  # another reader left scale 1: ask the file
        else:
            self.image_panel.show_note("voxel size from the layer's scale")

    def _read_file_spacing(self, layer, path: str):
        """Read the voxel size of ``path`` in a worker; put it on the layer (scale, units) and the
        widget, say where it came from, and warn when an axis has none. Returns the worker."""
        from napari.qt.threading import create_worker

        worker = create_worker(_file_spacing, path, _start_thread=False)
        self.image_panel.show_note(f"reading the voxel size from {Path(path).name}...")

        def done(result):
            spacing, sources = result
            if self._closing or layer not in self.viewer.layers:
                return
            scale = np.array(layer.scale, dtype=float)
            scale[-3:] = spacing
            layer.scale = scale
            layer.units = units_for(layer.ndim)
            layer.metadata = {**layer.metadata, SPACING_KEY: tuple(spacing), "spacing_sources": tuple(sources)}
            if self.image_combo.layer() == layer:
                self.image_panel.show_spacing(spacing)
            assumed = [a for a, src in zip("zyx", sources) if src == "default"]
            note = f"voxel size from the file's metadata ({Path(path).name})"
            if assumed:
                axes = ", ".join(assumed)
                note += f"; {axes} assumed 1 um (not in the file): check it"
                _show_warning(
                    f"{Path(path).name}: the file gives no voxel size for axis {axes}; 1 um assumed: "
                    "type the right value in the widget's voxel size"
                )
            self.image_panel.show_note(note)
            self.viewer.reset_view()

        def failed(exc):
            self.image_panel.show_note(f"no voxel size from {Path(path).name} ({exc}): type it in")

        worker.returned.connect(done)
        worker.errored.connect(failed)
        self._spacing_worker = worker
        worker.start()
        return worker

    def spacing_um(self) -> tuple[float, float, float]:
        """The spacing (z, y, x) shown in the widget, in um."""
        return self.image_panel.spacing_um()

    def _on_spacing_edited(self, *args) -> None:
        layer = self.image_combo.layer()
        if layer is None or layer.ndim < 3:
            return
        scale = np.array(layer.scale, dtype=float)
        old = scale[-3:].copy()
        scale[-3:] = self.spacing_um()
        layer.scale = scale
        # a typed voxel size replaces the file's (or an assumed) one on the axes it changed:
        # the layer remembers that, and the note stops saying "assumed"
        typed = ~np.isclose(old, scale[-3:])
        meta = layer.metadata or {}
        sources = list(meta.get("spacing_sources") or ("metadata",) * 3)
        for a in np.flatnonzero(typed):
            sources[a] = "typed"
        if SPACING_KEY in meta:
            layer.metadata = {**meta, SPACING_KEY: tuple(scale[-3:]), "spacing_sources": tuple(sources)}
        axes = ", ".join(a for a, src in zip("zyx", sources) if src == "typed")
        self.image_panel.show_note(
            f"voxel size typed in the widget ({axes})" if axes else "voxel size from the layer's scale"
        )

    def _image_volume(self, layer) -> np.ndarray:
        """The (Z, Y, X) float32 volume to fit: the current time point of a time series."""
        from deltamic_core._checks import check_memory

        data = layer.data
        if layer.ndim == 4:
            t = int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim == 4 else 0
            data = data[t]
        # lazy (dask/zarr) layers: refuse before materialising a volume that cannot fit
        check_memory(4.0 * float(np.prod(data.shape[-3:])), f"image layer {layer.name!r} as float32")
        return np.asarray(data, dtype=np.float32)

    # ------------------------------------------------------------------ the FitJob
    def init_spec(self):
        """The seeds as the pipeline's InitSpec: Points -> seeds (radii estimated unless given),
        Labels -> a label image, Surface -> a mesh (um, world coordinates)."""
        from deltamic_core.pipeline import InitSpec

        source = self.seed_source.currentText()
        if source == AUTO_SEEDS:
            if self.stain() == "membrane":
                raise ValueError("automatic seeds find filled objects: choose the stain 'interior' or 'both'")
            return InitSpec("auto")
        layer = self.seed_combo.layer()
        if layer is None:
            raise ValueError(f"no seeds: add a {source} layer (or pick another seed source)")
        if source == "Points":
            if len(layer.data) == 0:
                raise ValueError(f"no seeds: Points layer {layer.name!r} is empty; click one point per cell")
            if layer.ndim < 3:
                raise ValueError(f"Points layer {layer.name!r} is 2D; seeds need (z, y, x) coordinates")
            centres = np.asarray(layer.data)[:, -3:] * np.asarray(layer.scale[-3:]) + np.asarray(layer.translate[-3:])
            radius = self.seed_panel.radius_um()
            return InitSpec("seeds", data=(centres, None if radius is None else np.full(len(centres), radius)))
        if source == "Labels":
            if layer.ndim != 3:
                raise ValueError(
                    f"Labels layer {layer.name!r} has {layer.ndim} dimensions; a (Z, Y, X) label image is needed"
                )
            return InitSpec("labels", data=np.asarray(layer.data))
        if layer.metadata.get(VOXEL_UNITS_KEY):
            raise ValueError(
                f"Surface layer {layer.name!r} is in voxel units (a .rec without spacing): press "
                "'Place on image grid' first"
            )
        return InitSpec("mesh", data=layer_to_mesh(layer))

    def psf_spec(self):
        """The PSF as the pipeline's PSFSpec (the CLI's --psf options); for a measured PSF from a
        bead layer, the learn flag only (the model comes from :meth:`make_psf`)."""
        from deltamic_core.pipeline import PSFSpec

        if self.psf_panel.model() is None:
            return PSFSpec(learn=bool(self.learn_psf.isChecked()))
        return self.psf_panel.psf_spec()

    def fit_job(self):
        """The FitJob of the widget's settings: the job ``deltamic fit`` builds from the
        equivalent command line (same defaults), on the current image layer's data."""
        from deltamic_core.pipeline import FitJob

        image = self._image_layer()
        return FitJob(
            image_data=self._image_volume(image),
            spacing_um=self.spacing_um(),
            origin_um=tuple(image_origin(image)),
            init=self.init_spec(),
            psf=self.psf_spec(),
            edge_um=self.seed_panel.edge_um(),
            stain=self.stain(),
            progress=False,
            **self.fit_panel.fit_options(),
        )

    def prepare(self):
        """The checked fit of :meth:`fit_job` (``pipeline.prepare``; a bead layer's PSF if chosen)."""
        from deltamic_core import pipeline

        measured = self.make_psf() if self.psf_panel.model() is None else None
        return pipeline.prepare(self.fit_job(), psf=measured)

    # ------------------------------------------------------------------ seeds
    def stain(self) -> str:
        """What is labelled: "membrane", "interior" or "both" (FitJob.stain, the CLI's --stain)."""
        return self.seed_panel.stain()

    def _seed_settings_changed(self, *args) -> None:
        layer = self.seeder.layer
        if layer is not None and layer in self.viewer.layers and self.seed_combo.layer() == layer:
            self.seeder.schedule()

    @_guarded
    def click_to_seed(self, *args):
        """Create (or pick) the seeds Points layer over the image, selected and in add mode:
        each click adds a seed sphere, its radius estimated from the image. Returns the layer."""
        return self.seeder.start()

    def seed_mesh(self):
        """The initial mesh (um, world coordinates) the fit would start from."""
        from deltamic_core import pipeline

        image = self.image_combo.layer()
        spec = self.init_spec()
        if image is None and spec.kind == "labels":  # no image yet: the Labels layer's own grid
            layer = self.seed_combo.layer()
            return pipeline.initial_mesh(
                spec,
                None,
                image_spacing(layer),
                edge_um=self.seed_panel.edge_um(),
                origin_um=image_origin(layer),
                shape=layer.data.shape,
            )
        if spec.kind == "mesh":  # shown as it is; the fit checks it against the image
            return spec.data
        image = self._image_layer()
        return pipeline.initial_mesh(
            spec,
            self._image_volume(image),
            self.spacing_um(),
            psf=self.make_psf(),
            edge_um=self.seed_panel.edge_um(),
            origin_um=image_origin(image),
            stain=self.stain(),
        )

    @_guarded
    def create_initial_mesh(self, *args):
        """Build the initial mesh from the seeds and show it as a Surface layer."""
        with _input_warnings_shown():
            mesh = self.seed_mesh()
        return self._show_mesh(mesh, self._fit_layer_name())

    @_guarded
    def place_on_image_grid(self, *args):
        """Scale a Surface layer in voxel units by the image spacing (and shift by its origin)."""
        layer = self.seed_combo.layer() if self.seed_source.currentText() == "Surface" else None
        if layer is None:
            raise ValueError("choose a Surface layer as the seed source first")
        if layer.metadata.get(VOXEL_UNITS_KEY) is False:
            raise ValueError(f"Surface layer {layer.name!r} is already in um (placed or read with a spacing)")
        image = self._image_layer()
        spacing = np.asarray(self.spacing_um())
        origin = np.asarray(image_origin(image))
        verts = np.asarray(layer.vertices, dtype=np.float64) * spacing + origin
        layer.metadata = {**layer.metadata, VOXEL_UNITS_KEY: False, "spacing_um": tuple(spacing.tolist())}
        layer.data = (verts.astype(np.float32), np.asarray(layer.faces), *tuple(layer.data[2:]))
        return layer

    def _fit_layer_name(self) -> str:
        image = self.image_combo.layer()
        return f"{image.name} fit" if image is not None else "deltaMic fit"

    def _show_mesh(self, mesh, name: str):
        """Add (or replace in place) a Surface layer named ``name`` showing ``mesh``."""
        data, kwargs, _ = mesh_to_layer_data(mesh, name, extra_metadata={VOXEL_UNITS_KEY: False})
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], self._layers.Surface):
            layer = self.viewer.layers[name]
            layer.data = data
            layer.metadata = kwargs["metadata"]
            layer.contrast_limits = kwargs["contrast_limits"]
            return layer
        return self.viewer.add_surface(data, **kwargs)

    # ------------------------------------------------------------------ PSF
    def make_psf(self):
        """The PSF model chosen in the widget: the pipeline's ``make_psf`` (or a bead layer's)."""
        from deltamic_core import pipeline
        from deltamic_core.psf import MeasuredPSF

        if self.psf_panel.model() is not None:
            return pipeline.make_psf(self.psf_spec(), self.spacing_um())
        bead = self.bead_combo.layer()
        if bead is None:
            raise ValueError("measured PSF: choose an Image layer holding a bead image")
        if bead.ndim != 3:
            raise ValueError(f"measured PSF: bead image {bead.name!r} has {bead.ndim} dimensions, (Z, Y, X) needed")
        return MeasuredPSF.from_bead_image(np.asarray(bead.data, dtype=np.float32), image_spacing(bead))

    def _current_mesh(self):
        """The mesh to preview: the fit layer if present, else the seeds."""
        name = self._fit_layer_name()
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], self._layers.Surface):
            return layer_to_mesh(self.viewer.layers[name])
        return self.seed_mesh()

    @_guarded
    def preview(self, *args):
        """Render the current mesh with the current PSF on the image grid, as an Image layer.

        The render runs in a worker thread; the layer appears when it is done. Returns the worker.
        """
        from napari.qt.threading import create_worker

        from deltamic_core.pipeline import render_mesh_image

        image = self._image_layer()
        mesh = self._current_mesh()
        spacing = self.spacing_um()
        origin = image_origin(image)
        shape = tuple(image.data.shape[-3:])
        worker = create_worker(
            render_mesh_image,
            mesh,
            shape,
            spacing,
            self.make_psf(),
            origin,
            backend=self.backend_combo.currentText(),
            _start_thread=False,
        )
        name = f"{image.name} preview"

        def show(rendered):
            if name in self.viewer.layers:
                self.viewer.layers[name].data = rendered
            else:
                self.viewer.add_image(
                    rendered,
                    name=name,
                    scale=spacing,
                    translate=origin,
                    units=UNITS_ZYX,
                    colormap="magenta",
                    blending="additive",
                )
            self.preview_button.setEnabled(True)

        def failed(exc):
            self.preview_button.setEnabled(True)
            _show_error(f"preview failed: {exc}")

        worker.returned.connect(show)
        worker.errored.connect(failed)
        self.preview_button.setEnabled(False)
        self._preview_worker = worker
        worker.start()
        return worker

    # ------------------------------------------------------------------ fit
    def fit_config(self):
        """The ``deltamic_core.fit.FitConfig`` of the widget's settings (the pipeline's)."""
        from deltamic_core.pipeline import FitJob, PSFSpec

        return FitJob(psf=PSFSpec(learn=bool(self.learn_psf.isChecked())), **self.fit_panel.fit_options()).fit_config()

    @property
    def _worker(self):
        return self.runner.worker

    @property
    def is_running(self) -> bool:
        return self.runner.is_running

    @_guarded
    def run_fit(self, *args):
        """Start a fit in a background thread; the Surface layer updates as it goes."""
        if self.runner.is_running:
            raise ValueError("a fit is already running: stop it first")
        with _input_warnings_shown():
            prepared = self.prepare()
        self.save_settings()
        self._fit_layer = self._show_mesh(prepared.init_mesh, self._fit_layer_name())
        self._last_step = None
        self.step_times = []
        self.first_update_s = None
        self.loss_plot.clear()
        self.progress.setRange(0, prepared.config.total_iterations)
        self.progress.setValue(0)
        self.status_label.setText("building the render plan...")
        self._last_update = 0.0
        self._applied_iteration = None
        self._start_activity(prepared.config.total_iterations)
        self.runner.start(prepared)
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        return self.runner.worker

    def _start_activity(self, total: int) -> None:
        """A progress bar in napari's activity dock (napari's ``progress``), the loss in its text."""
        from napari.utils import progress
        from qtpy.QtCore import QTimer

        self._end_activity()
        self.activity = progress(total=int(total), desc="deltaMic fit")
        self._activity_state = None
        self._activity_busy = False
        # napari's bar processes Qt events when it updates: never from inside a step's slot
        # (the next steps would be delivered inside it, recursively), but from a timer
        self._activity_timer = QTimer(self)
        self._activity_timer.setInterval(250)
        self._activity_timer.timeout.connect(self._show_activity)
        self._activity_timer.start()

    def _show_activity(self) -> None:
        bar, state = getattr(self, "activity", None), getattr(self, "_activity_state", None)
        if bar is None or state is None or self._activity_busy:
            return
        self._activity_busy = True
        try:
            iteration, loss = state
            if iteration > bar.n:
                bar.set_description(f"deltaMic fit: loss {loss:.4g}")
                bar.update(iteration - bar.n)
        finally:
            self._activity_busy = False

    def _end_activity(self) -> None:
        timer = getattr(self, "_activity_timer", None)
        if timer is not None:
            try:
                timer.stop()
            except RuntimeError:  # deleted with the widget (the viewer closed)
                pass
        self._activity_timer = None
        bar = getattr(self, "activity", None)
        self.activity = None
        if bar is not None:
            bar.close()

    def stop_fit(self, *args) -> None:
        """Ask the fit to stop after the current iteration; the last good mesh stays."""
        if self.runner.is_running:
            self.status_label.setText("stopping after this iteration...")
            self.runner.stop()

    def _on_step(self, step: Step) -> None:
        if self._closing:
            return
        if step.rolled_back:
            # the core undid a step that produced NaN/Inf and halved the step size
            self.status_label.setText(f"iteration {step.iteration}: step rolled back (non-finite), step size halved")
            return
        if not (math.isfinite(step.loss) and np.isfinite(step.verts).all()):
            self.stop_fit()
            _show_error(f"iteration {step.iteration} produced NaN/Inf; stopped and kept the last good mesh")
            return
        self._last_step = step
        self.step_times.append(step.seconds)
        self.loss_plot.append(step.iteration, step.loss)
        self.progress.setValue(step.iteration)
        self._activity_state = (step.iteration, step.loss)  # shown by the activity timer
        now = time.perf_counter()
        if now - self._last_update >= self.update_interval_s or step.iteration == self.progress.maximum():
            self._apply_step(step)
            self._last_update = time.perf_counter()
        per_it = float(np.median(self.step_times))
        self.status_label.setText(
            f"iteration {step.iteration}/{self.progress.maximum()}  loss {step.loss:.4g}  {per_it:.2f} s/iteration"
        )

    def _apply_step(self, step: Step) -> None:
        layer = self._fit_layer
        if layer is None or layer not in self.viewer.layers:
            return  # the user deleted the layer: keep fitting, show nothing
        if getattr(self, "_applied_iteration", None) == step.iteration:
            return  # already shown: never re-send an unchanged mesh
        self._applied_iteration = step.iteration
        from deltamic_core.mesh import Mesh

        mesh = Mesh(step.verts, step.faces, labels=step.labels)
        layer.data = (step.verts.astype(np.float32), step.faces, vertex_cell_ids(mesh))
        meta = dict(layer.metadata)
        if step.labels is not None:
            meta["labels"] = step.labels
        meta["fit_iteration"] = step.iteration
        meta["fit_loss"] = step.loss
        layer.metadata = meta
        if self.first_update_s is None:
            self.first_update_s = step.since_start

    def _on_error(self, exc: Exception) -> None:
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, MemoryError) or "out of memory" in msg.lower():
            msg = (
                f"not enough memory for this fit ({msg}): crop the image, use fewer/larger triangles, or a smaller band"
            )
        _show_error(f"fit failed: {msg}")

    def _on_finished(self) -> None:
        self._end_activity()
        if self._closing:
            return
        if self._last_step is not None:
            self._apply_step(self._last_step)  # the last good mesh, also after Stop
            text = f"done: {self._last_step.iteration} iterations, loss {self._last_step.loss:.4g}"
            if self.learn_psf.isChecked():
                text += "\nlearned " + self._show_learned_psf(self._last_step.psf_params)
            self.status_label.setText(text)
            labels_layer = getattr(self, "_labels_layer", None)
            if labels_layer is not None and labels_layer in self.viewer.layers:
                self.make_labels()  # keep the Labels layer and its features in step with the meshes
        else:
            self.status_label.setText("stopped before the first iteration")
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    def _show_learned_psf(self, params: dict) -> str:
        """Copy learned Gaussian widths back into the widget; describe any learned PSF."""
        from deltamic_core.psf import psf_from_dict

        if params.get("type") == "GaussianPSF" and self.psf_panel.model() == "gaussian":
            self.psf_panel.set_sigma(params["sigma_um"])
        return psf_from_dict(params).describe()

    # ------------------------------------------------------------------ results
    def result_mesh(self):
        """The fitted mesh (um, world coordinates) from the fit's Surface layer."""
        name = self._fit_layer_name()
        layer = self._fit_layer if self._fit_layer is not None and self._fit_layer in self.viewer.layers else None
        if layer is None and name in self.viewer.layers:
            layer = self.viewer.layers[name]
        if layer is None:
            raise ValueError("no fitted mesh yet: press Run (or Create mesh)")
        return layer_to_mesh(layer)

    def export_mesh(self, path) -> str:
        """Write the fitted mesh to ``path`` (.rec keeps cell labels; .ply/.obj geometry)."""
        from deltamic_core.io import write_mesh

        path = str(path)
        suffix = Path(path).suffix.lower()
        if suffix not in (".rec", ".ply", ".obj"):
            raise ValueError(f"export path must end with .rec, .ply or .obj, got {path!r}")
        write_mesh(path, self.result_mesh())
        return path

    @_guarded
    def _export_dialog(self, *args):
        path, _ = QFileDialog.getSaveFileName(self, "Export mesh", "", "Mesh (*.rec *.ply *.obj)")
        if path:
            self.export_mesh(path)
            _show_info(f"mesh written to {path}")

    def _results_worker(self, on_done, *, labels: bool = True):
        """Rasterise (if ``labels``) and measure the fitted mesh in a worker thread; the
        Labels layer (features = the measurements) and the table are set on the main thread."""
        from napari.qt.threading import create_worker

        mesh = self.result_mesh()
        image = self._image_layer() if labels else None
        grid = None
        if image is not None:
            grid = (tuple(image.data.shape[-3:]), self.spacing_um(), image_origin(image), image.name)
        worker = create_worker(_rasterise_and_measure, mesh, grid, _start_thread=False)
        buttons = (self.labels_button, self.measure_button)

        def done(result):
            for b in buttons:
                b.setEnabled(True)
            if not self._closing:
                on_done(*result)

        def failed(exc):
            for b in buttons:
                b.setEnabled(True)
            _show_error(f"results failed: {exc}")

        worker.returned.connect(done)
        worker.errored.connect(failed)
        for b in buttons:
            b.setEnabled(False)
        self._results_worker_ref = worker
        worker.start()
        return worker

    def _set_results(self, labels, rows, grid) -> None:
        """Show measurements in the table and, with a label image, as a Labels layer whose
        ``features`` are the measurements (napari's features table shows them)."""
        from deltamic_core.pipeline.outputs import CELL_TABLE_COLUMNS

        self.measurements = rows
        self.results_panel.show_rows(rows, CELL_TABLE_COLUMNS)
        if labels is None:
            self._update_labels_features(rows)
            return
        shape, spacing, origin, image_name = grid
        name = f"{image_name} cells"
        n_cells = max([int(r["cell"]) for r in rows] + [int(labels.max())])
        features = labels_features(rows)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], self._layers.Labels):
            layer = self.viewer.layers[name]
            layer.data = labels
            layer.scale, layer.translate = spacing, origin
        else:
            layer = self.viewer.add_labels(labels, name=name, scale=spacing, translate=origin, units=UNITS_ZYX)
        layer.colormap = labels_colormap(n_cells)
        layer.features = features
        self._labels_layer = layer

    def _update_labels_features(self, rows) -> None:
        layer = getattr(self, "_labels_layer", None)
        if layer is not None and layer in self.viewer.layers:
            layer.features = labels_features(rows)

    @_guarded
    def make_labels(self, *args):
        """Rasterise the fitted cells into an instance Labels layer on the image grid (in a
        worker), its features the measurements, its colours the Surface's. Returns the worker."""
        return self._results_worker(self._set_results, labels=True)

    @_guarded
    def measure(self, *args):
        """Per-cell volume, area, sphericity, centroid and contacts of the fitted mesh (in a
        worker), shown in the table and as the Labels layer's features. Returns the worker."""
        return self._results_worker(self._set_results, labels=False)

    def save_csv(self, path) -> str:
        """Write the measurements table to ``path`` as CSV (atomically)."""
        from deltamic_core.pipeline.outputs import CELL_TABLE_COLUMNS, write_csv

        if not self.measurements:
            raise ValueError("no measurements yet: press Measure first")
        write_csv(path, self.measurements, CELL_TABLE_COLUMNS)
        return str(path)

    @_guarded
    def _csv_dialog(self, *args):
        path, _ = QFileDialog.getSaveFileName(self, "Save measurements", "", "CSV (*.csv)")
        if path:
            self.save_csv(path)
            _show_info(f"table written to {path}")

    # ------------------------------------------------------------------ result folder, command line
    def _image_file(self, layer) -> str | None:
        """The file an Image layer was read from (napari's ``source.path``, or our reader's)."""
        path = getattr(getattr(layer, "source", None), "path", None) or layer.metadata.get("source")
        return str(path) if path else None

    def command_words(self, out: str | None = None) -> list[str]:
        """The ``deltamic fit`` command equivalent to the widget's settings (FitJob.to_cli_args).

        In-memory inputs without a file get placeholders: IMAGE.tif for an image not read from
        a file, SEEDS.csv / LABELS.tif / MESH.ply for the seed layer."""
        from deltamic_core.pipeline import InitSpec

        image = self._image_layer()
        job = self.fit_job().replace(image_data=None, image=self._image_file(image) or "IMAGE.tif", out=out)
        placeholder = {"seeds": "SEEDS.csv", "labels": "LABELS.tif", "mesh": "MESH.ply"}.get(job.init.kind)
        if placeholder is not None:
            job = job.replace(init=InitSpec(job.init.kind, placeholder))
        job = job.replace(progress=True)
        if self.psf_panel.model() is None:
            raise ValueError(
                "a measured PSF from an image layer has no command-line form (use --psf measured BEAD.tif)"
            )
        return job.to_cli_args()

    @_guarded
    def copy_command(self, *args) -> str:
        """Copy the equivalent command line to the clipboard (and return it)."""
        from qtpy.QtWidgets import QApplication

        from deltamic_core.pipeline.cli_args import shell_line

        line = shell_line(self.command_words())
        QApplication.clipboard().setText(line)
        placeholders = [p for p in ("IMAGE.tif", "SEEDS.csv", "LABELS.tif", "MESH.ply") if p in line.split()]
        note = f" (replace {', '.join(placeholders)} by your files)" if placeholders else ""
        _show_info(f"copied: {line}{note}")
        self.status_label.setText(f"command copied{note}:\n{line}")
        return line

    def _report(self, mesh) -> dict:
        """report.json of the current result, as ``deltamic fit`` writes it (``fit_report``)."""
        import dataclasses

        from deltamic_core.pipeline.outputs import versions
        from deltamic_core.pipeline.run import fit_report

        image = self._image_layer()
        try:
            command = self.command_words(out="OUT")
        except ValueError:
            command = None
        res, prepared = self.runner.last_result, self.runner.last_prepared
        if res is not None and prepared is not None:
            report = fit_report(res, prepared.psf, prepared.config, dict(self.runner.last_timings), command=command)
        else:  # a mesh that was not fitted here (seeds, an opened result): no fit history
            report = {
                "command": command,
                "loss_history": [],
                "final_loss": None,
                "iterations": 0,
                "timings": {},
                "config": dataclasses.asdict(self.fit_config()),
                "versions": versions(),
            }
        report["input"] = self._image_file(image)
        report["image"] = {"shape": list(image.data.shape[-3:]), "spacing_um": list(self.spacing_um())}
        report["origin_um"] = list(image_origin(image))
        report["n_cells"] = int(mesh.n_cells)
        report["written_by"] = "napari-deltamic widget"
        return report

    @_guarded
    def save_all(self, out, *, overwrite: bool = False):
        """Write the CLI's result folder for the current mesh to ``out`` (in a worker; staged and
        renamed into place with its manifest). Returns the worker."""
        from napari.qt.threading import create_worker

        from deltamic_core.pipeline.outputs import check_replaceable

        mesh = self.result_mesh()
        image = self._image_layer()
        src = self._image_file(image)
        check_replaceable(out, overwrite=overwrite, inputs=[src] if src else [])
        grid = (tuple(image.data.shape[-3:]), self.spacing_um(), image_origin(image))
        worker = create_worker(_write_result, str(out), mesh, grid, self._report(mesh), overwrite, _start_thread=False)

        def done(path):
            self.save_all_button.setEnabled(True)
            self.saved_result = path
            _show_info(f"result written to {path}")

        def failed(exc):
            self.save_all_button.setEnabled(True)
            _show_error(f"Save all failed: {exc}")

        worker.returned.connect(done)
        worker.errored.connect(failed)
        self.save_all_button.setEnabled(False)
        self._save_worker = worker
        worker.start()
        return worker

    @_guarded
    def _save_all_dialog(self, *args):
        from deltamic_core.pipeline.outputs import is_complete

        path, _ = QFileDialog.getSaveFileName(self, "Save all: a new result folder", "", "Result folder (*)")
        if path:
            return self.save_all(path, overwrite=is_complete(path))
        return None

    @_guarded
    def open_result(self, folder):
        """Open a result folder with the plugin's reader (image, labels with features, meshes)
        and take its settings (the command in report.json) into the widget. Returns its layers."""
        from ._results_io import is_result_dir

        if not is_result_dir(folder):
            raise ValueError(f"{folder} is not a complete deltamic result folder (report.json and its manifest)")
        layers = self.viewer.open(str(folder), plugin="napari-deltamic")
        report = next((ly.metadata.get("report") for ly in layers if ly.metadata.get("report")), None)
        for ly in layers:
            if isinstance(ly, self._layers.Image):
                self.image_combo.set_layer(ly)
            elif isinstance(ly, self._layers.Labels):
                self._labels_layer = ly
        if report and report.get("command"):
            self.apply_command(report["command"])
        return layers

    @_guarded
    def _open_result_dialog(self, *args):
        path = QFileDialog.getExistingDirectory(self, "Open a result folder")
        if path:
            return self.open_result(path)
        return None

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict:
        """The widget's settings as plain data (the remembered JSON)."""
        from ._settings import read_controls

        return read_controls(self)

    def apply_settings(self, values: dict) -> None:
        from ._settings import write_controls

        write_controls(self, values)

    def apply_command(self, words) -> None:
        """Set the controls from a ``deltamic fit`` command line (a report's ``command``)."""
        from ._settings import settings_from_command

        self.apply_settings(settings_from_command(words, self._default_settings))

    @_guarded
    def restore_defaults(self, *args) -> None:
        """Every control back to its default (the command line's)."""
        self.apply_settings(self._default_settings)

    def save_settings(self) -> None:
        from ._settings import save_settings

        save_settings(self.settings())

    # ------------------------------------------------------------------ shutdown
    def _install_close_hooks(self) -> None:
        """Stop the fit when the window holding this widget closes, and when the app quits.

        napari builds the widget before docking it and hands it a public-only proxy of the
        viewer, which offers no close event; so the widget follows its own Qt parent chain
        (dock widget, then main window) and watches the top-level window's Close event.
        """
        from qtpy.QtWidgets import QApplication

        self._close_watcher = _CloseWatcher(self, self.shutdown_now)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown_now)

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Stop a running fit and wait (up to ``timeout_s``) for its thread to end.

        Safe inside the viewer's close sequence: it processes no Qt events (napari is deleting
        its widgets then); it blocks on the worker thread's own finished flag instead.
        Returns True if no fit is running any more.
        """
        if not self._closing:
            self.save_settings()
            self._end_activity()
        self._closing = True
        return self.runner.shutdown(timeout_s)

    def shutdown_now(self, *args) -> None:
        self.shutdown()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)


def _file_spacing(path: str):
    """Worker body: the voxel size (z, y, x) um of a TIFF and per axis where it came from."""
    import warnings

    from deltamic_core.io import read_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said by the widget, once, as a notification
        _, meta = read_image(path)
    return tuple(float(s) for s in meta.spacing_um), tuple(meta.spacing_sources)


def _write_result(out, mesh, grid, report, overwrite):
    """Worker body of Save all: the CLI's outputs writer in a staging directory."""
    from deltamic_core.pipeline.outputs import staged_directory, write_fit_outputs

    shape, spacing, origin = grid
    with staged_directory(out, overwrite=overwrite) as tmp:
        write_fit_outputs(tmp, mesh, shape=shape, spacing_um=spacing, origin_um=origin, report=report)
    return out


def _rasterise_and_measure(mesh, grid):
    """Worker body: (label image or None, cell table rows, grid). Plain numpy, no layers."""
    from deltamic_core.geometry import label_image
    from deltamic_core.pipeline.outputs import cell_table

    rows = cell_table(mesh)
    labels = None
    if grid is not None:
        shape, spacing, origin, _ = grid
        labels = label_image(mesh, shape, spacing, origin)
    return labels, rows, grid


class _CloseWatcher(QObject):
    """Calls ``callback`` when the top-level ancestor of ``widget`` receives a Close event.

    It filters the events of every widget on the parent chain and extends the chain whenever
    one of them is re-parented (napari docks the widget after constructing it, and puts the
    dock into the main window after that). A top-level ``widget`` itself is left to its own
    ``closeEvent``. The watcher is a child of ``widget`` and keeps no Python reference to any
    ancestor (that would keep napari's window alive after it closed).
    """

    def __init__(self, widget: QWidget, callback):
        super().__init__(widget)
        self._callback = callback
        self._watch_ancestors()

    def _ancestors(self) -> list:
        chain = []
        w = self.parent()
        while w is not None:
            chain.append(w)
            w = w.parentWidget()
        return chain

    def _watch_ancestors(self) -> None:
        for w in self._ancestors():
            w.installEventFilter(self)  # installing twice keeps a single filter

    def eventFilter(self, obj, event):
        kind = event.type()
        if kind == QEvent.ParentChange:
            self._watch_ancestors()
        elif kind == QEvent.Close:
            chain = self._ancestors()
            if len(chain) > 1 and obj is chain[-1]:
                self._callback()
        return False
