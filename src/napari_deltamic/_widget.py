"""The deltaMic dock widget: seed meshes, pick a PSF, fit by inverse rendering, measure.

The widget is thin: its panels (:mod:`._panels`) turn the controls into a
``deltamic_core.pipeline.FitJob`` (the same job ``deltamic fit`` builds from its command line,
with the same defaults), the pipeline checks it and builds the fit, and the runner
(:mod:`._runner`) drives the fit in a thread worker; meshes, PSFs, rendering, fitting and
measurements all come from ``deltamic_core``. This module holds the seeds, the PSF and the fit
run; the image and its voxel size are in :mod:`._image_source`, and the results (export,
Labels and measurements, Save all / Open result, settings) in :mod:`._results_actions`.

World coordinates are micrometres: the Image layer's ``scale`` is its voxel spacing and the
Surface layers hold vertices in um, so image and meshes overlay without further transforms.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from ._cells import CellEditor, CellsPanel
from ._image_source import ImageSourceMixin
from ._layers import (
    UNITS_ZYX,
    VOXEL_UNITS_KEY,
    image_origin,
    image_spacing,
    layer_to_mesh,
    mesh_to_layer_data,
    vertex_cell_ids,
)
from ._notify import _guarded, _input_warnings_shown, _show_error, _show_warning, start_worker
from ._panels import AUTO_SEEDS, FitPanel, ImagePanel, PSFPanel, ResultsPanel, SeedPanel
from ._results_actions import ResultsMixin
from ._runner import FitRunner, Step, start_warm_up, wait_warm_up
from ._seeds import ClickSeeder
from ._timelapse import Propagator, TimelapsePanel

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
    "timelapse_panel": ("propagate_button", "propagate_stop_button", "propagate_status"),
    "results_panel": (
        "export_button",
        "labels_button",
        "measure_button",
        "table",
        "csv_button",
        "save_all_button",
        "open_result_button",
    ),
    "cells_panel": (
        "cell_status",
        "refit_button",
        "delete_button",
        "merge_button",
        "split_button",
        "undo_button",
        "redo_button",
    ),
}


ACTIVITY_INTERVAL_MS = 1000  # napari's activity bar: one update (value or loss text) a second
INDICATOR_SPEED_PERCENT = 15  # napari's animated 'in progress' indicator while a fit runs: ~2 frames/s


class DeltaMicWidget(ImageSourceMixin, ResultsMixin, QWidget):
    """Dock widget: image + seeds + PSF -> fitted cell meshes, labels and measurements."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        import napari

        self.viewer = napari_viewer
        self._layers = napari.layers
        self._closing = False
        self._last_step: Step | None = None
        self._fit_layer = None
        self._workers = {}  # name -> the running thread worker of a button (_notify.start_worker)
        self.first_update_s: float | None = None  # time from Run to the first surface update
        self.step_times: list[float] = []
        self.measurements: list[dict] = []
        self._applied_iteration = None
        self._run_error: str | None = None  # the last run's failure, as notified
        self.runner = FitRunner(self._on_prepared, self._on_update, self._on_error, self._on_finished, parent=self)

        self.image_panel = ImagePanel(self.viewer, self._layers)
        self.seed_panel = SeedPanel(self.viewer, self._layers)
        self.psf_panel = PSFPanel(self.viewer, self._layers)
        self.fit_panel = FitPanel()
        self.timelapse_panel = TimelapsePanel()
        self.results_panel = ResultsPanel()
        self.cells_panel = CellsPanel()  # pick, refit, delete, merge, split a cell (_cells.py)
        for panel, names in _CONTROLS.items():
            for name in names:
                setattr(self, name, getattr(getattr(self, panel), name))
        self.seeder = ClickSeeder(self)
        self._connect()
        self.propagator = Propagator(self, self.timelapse_panel)  # time-lapse (_timelapse.py)
        self.cells = CellEditor(self, self.cells_panel)

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
        self.runner.start_server()  # the fit server process: starts and warms up meanwhile
        start_warm_up()  # imports of preparing a job (and of a fit in this process, the fallback)
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
        self.stain_combo.currentIndexChanged.connect(lambda _: self.fit_panel.show_stain_defaults(self.stain()))
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

    def fit_job(self, *, materialise: bool = True):
        """The FitJob of the widget's settings: the job ``deltamic fit`` builds from the
        equivalent command line (same defaults), on the current image layer's data (as the
        layer holds it with ``materialise=False``: ``pipeline.prepare`` reads it)."""
        from deltamic_core.pipeline import FitJob

        image = self._image_layer()
        return FitJob(
            image_data=self._image_volume(image, materialise=materialise),
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
        return self._preparation()()

    def _preparation(self):
        """``make() -> pipeline.Prepared`` for a worker thread: the controls are read now (main
        thread), the image read, checked and seeded, and a bead image measured, by ``make``."""
        job = self.fit_job(materialise=False)
        bead = None if self.psf_panel.model() is not None else self._bead_layer()
        bead_data, bead_spacing = (None, None) if bead is None else (bead.data, image_spacing(bead))

        def make():
            from deltamic_core import pipeline
            from deltamic_core.psf import MeasuredPSF

            measured = None
            if bead is not None:
                measured = MeasuredPSF.from_bead_image(np.asarray(bead_data, dtype=np.float32), bead_spacing)
            return pipeline.prepare(job, psf=measured)

        return make

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
            layer.metadata = kwargs["metadata"]  # first: the data event sees the mesh it shows
            layer.data = data
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
        bead = self._bead_layer()
        return MeasuredPSF.from_bead_image(np.asarray(bead.data, dtype=np.float32), image_spacing(bead))

    def _bead_layer(self):
        bead = self.bead_combo.layer()
        if bead is None:
            raise ValueError("measured PSF: choose an Image layer holding a bead image")
        if bead.ndim != 3:
            raise ValueError(f"measured PSF: bead image {bead.name!r} has {bead.ndim} dimensions, (Z, Y, X) needed")
        return bead

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
        from deltamic_core.pipeline import render_mesh_image

        image = self._image_layer()
        mesh = self._current_mesh()
        spacing = self.spacing_um()
        origin = image_origin(image)
        shape = tuple(image.data.shape[-3:])
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

        return start_worker(
            self,
            "preview",
            (self.preview_button,),
            render_mesh_image,
            mesh,
            shape,
            spacing,
            self.make_psf(),
            origin,
            backend=self.backend_combo.currentText(),
            on_done=show,
            what="preview",
        )

    # ------------------------------------------------------------------ fit
    def fit_config(self):
        """The ``deltamic_core.fit.FitConfig`` of the widget's settings (the pipeline's), its
        stain included (the time-lapse and the cell refits fit with it too)."""
        from deltamic_core.pipeline import FitJob, PSFSpec

        psf = PSFSpec(learn=bool(self.learn_psf.isChecked()))
        return FitJob(psf=psf, stain=self.stain(), **self.fit_panel.fit_options()).fit_config()

    @property
    def _worker(self):
        return self.runner.worker

    @property
    def is_running(self) -> bool:
        return self.runner.is_running

    @_guarded
    def run_fit(self, *args):
        """Start a fit in a background thread: the job is prepared there too (input checks,
        seed radii, the initial mesh, shown when ready); the Surface layer updates as it goes."""
        if self.runner.is_running:
            raise ValueError("a fit is already running: stop it first")
        make = self._preparation()  # reads the controls; the work is done by the worker
        self.save_settings()
        self._last_step = None
        self.step_times = []
        self.first_update_s = None
        self._applied_iteration = None
        self._run_error = None
        self.loss_plot.clear()
        # no busy (animated) bar while the job is prepared: every frame would repaint the window
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status_label.setText("preparing the fit...")
        self.runner.start(make)
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        return self.runner.worker

    def _on_prepared(self, prepared, notes) -> None:
        """The worker prepared the job: show the initial mesh, the progress bars."""
        for note in notes:
            _show_warning(note)
        if self._closing:
            return
        self._fit_layer = self._show_mesh(prepared.init_mesh, self._fit_layer_name())
        total = prepared.config.total_iterations
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.status_label.setText("building the render plan...")
        self.seeder.live.fit_prepared()  # seeds clicked while the job was prepared join the fit now
        # napari's activity bar in a later pass of the event loop: its creation (0.35-0.45 s,
        # it repaints the window) and the new mesh's first draw are then two shorter stalls
        from qtpy.QtCore import QTimer

        worker = self.runner.worker

        def start_activity():
            if not self._closing and worker is not None and self.runner.worker is worker:
                self._start_activity(total)

        QTimer.singleShot(0, start_activity)

    def _start_activity(self, total: int) -> None:
        """A progress bar in napari's activity dock (napari's ``progress``), the loss in its text."""
        from napari.utils import progress
        from qtpy.QtCore import QTimer

        self._end_activity()
        self.activity = progress(total=int(total), desc="deltaMic fit")
        self._activity_state = None
        self._activity_busy = False
        self._activity_text_next = False
        self._activity_text = None
        # napari's bar processes Qt events when it updates: never from inside a step's slot
        # (the next steps would be delivered inside it, recursively), but from a timer. Each of
        # its updates (value or text) repaints the whole window there and then: 60-130 ms on
        # the 2-core machine under Xvfb (bench_napari: 2.2 s of the UI thread's 7.2 s at 4 Hz
        # with both), so once a second, and the value and the loss text in turn
        self._activity_timer = QTimer(self)
        self._activity_timer.setInterval(ACTIVITY_INTERVAL_MS)
        self._activity_timer.timeout.connect(self._show_activity)
        self._activity_timer.start()
        self._pace_activity_indicator(INDICATOR_SPEED_PERCENT)

    def _show_activity(self) -> None:
        bar, state = getattr(self, "activity", None), getattr(self, "_activity_state", None)
        if bar is None or state is None or self._activity_busy:
            return
        self._activity_busy = True
        try:
            iteration, loss = state
            text = f"deltaMic fit: loss {loss:.4g}"
            text_due = self._activity_text_next or iteration <= bar.n
            self._activity_text_next = not text_due
            if text_due and text != self._activity_text:
                bar.set_description(text)
                self._activity_text = text
            elif iteration > bar.n:
                bar.update(iteration - bar.n)
        finally:
            self._activity_busy = False

    def _pace_activity_indicator(self, percent: int) -> None:
        """Set the speed of napari's animated "in progress" indicator (a QMovie of napari's
        loading.gif on a QLabel of the main window's status bar, found through Qt's object
        tree). Each of its ~14 frames a second repaints the whole window, which holds the
        canvas's GL widget: under software GL on the 2-core machine that is a composition of
        tens of ms each, more of the UI thread's time than the fit's own updates took."""
        from qtpy.QtWidgets import QLabel

        try:
            window = self.window()
            if window is None or window is self:
                return
            for label in window.findChildren(QLabel):
                movie = label.movie()
                if movie is not None and movie.fileName().endswith("loading.gif"):
                    movie.setSpeed(int(percent))
        except RuntimeError:  # the window is being deleted
            pass

    def _end_activity(self) -> None:
        if getattr(self, "activity", None) is not None:
            self._pace_activity_indicator(100)
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
        """Stop the fit now (the step in progress is abandoned); the last good mesh stays."""
        if self.runner.is_running:
            self.status_label.setText("stopping...")
            self.runner.stop()

    def _on_update(self, box) -> None:
        """New steps from the worker (``_runner.Delivery``): the newest state is drawn, the loss of
        every step plotted."""
        if self._closing:
            return
        if box.rolled_back:
            # the core undid a step that produced NaN/Inf and halved the step size
            self.status_label.setText(
                f"iteration {box.rolled_back[-1]}: step rolled back (non-finite), step size halved"
            )
        step = box.latest
        if step is None:
            return
        if not (math.isfinite(step.loss) and np.isfinite(step.verts).all()):
            self.stop_fit()
            _show_error(f"iteration {step.iteration} produced NaN/Inf; stopped and kept the last good mesh")
            return
        self._last_step = step
        self.step_times.extend(seconds for _, _, seconds in box.losses)
        self.loss_plot.extend((it, loss) for it, loss, _ in box.losses)
        self.progress.setValue(step.iteration)
        self._activity_state = (step.iteration, step.loss)  # shown by the activity timer
        self._apply_step(step)
        per_it = float(np.median(self.step_times))
        self.status_label.setText(
            f"iteration {step.iteration}/{self.progress.maximum()}  loss {step.loss:.4g}  {per_it:.2f} s/iteration"
        )

    def _apply_step(self, step: Step) -> None:
        layer = self._fit_layer
        if layer is None or layer not in self.viewer.layers:
            return  # the user deleted the layer: keep fitting, show nothing
        if self._applied_iteration == step.iteration:
            return  # already shown: never re-send an unchanged mesh
        self._applied_iteration = step.iteration
        meta = dict(layer.metadata)
        same_cells = _same(meta.get("labels"), step.labels) and _same(layer.faces, step.faces)
        if step.labels is not None:
            meta["labels"] = step.labels
        meta["fit_iteration"] = step.iteration
        meta["fit_loss"] = step.loss
        layer.metadata = meta  # first: the data event below sees the state it shows
        verts = step.verts.astype(np.float32)
        if same_cells:  # only the vertices moved: faces and cell colours stay
            layer.vertices = verts
        else:
            from deltamic_core.mesh import Mesh

            layer.data = (verts, step.faces, vertex_cell_ids(Mesh(step.verts, step.faces, labels=step.labels)))
        if self.first_update_s is None:
            self.first_update_s = step.since_start

    def _on_error(self, exc: Exception) -> None:
        """The worker failed (``_runner.FitError``): one notification, in the user's terms."""
        original = getattr(exc, "original", exc)
        msg = str(exc) or type(original).__name__
        if isinstance(original, MemoryError) or any(m in msg.lower() for m in ("out of memory", "not enough memory")):
            msg = (
                f"not enough memory for this fit ({msg}): crop the image, use fewer/larger triangles, or a smaller band"
            )
        if not isinstance(original, ValueError):  # a ValueError is about the input: said as it is
            msg = f"fit failed: {msg}"
        self._run_error = msg
        _show_error(msg)

    def _on_finished(self) -> None:
        self._end_activity()
        self.loss_plot.redraw()  # the last points, now
        if self._closing:
            return
        if self._last_step is not None:
            self._apply_step(self._last_step)  # the last good mesh, also after Stop
            text = f"done: {self._last_step.iteration} iterations, loss {self._last_step.loss:.4g}"
            if self._run_error:
                text = f"{self._run_error}\nkept the mesh of iteration {self._last_step.iteration}"
            if self.learn_psf.isChecked():
                text += "\nlearned " + self._show_learned_psf(self._last_step.psf_params)
            self.status_label.setText(text)
            labels_layer = getattr(self, "_labels_layer", None)
            if labels_layer is not None and labels_layer in self.viewer.layers:
                self.make_labels()  # keep the Labels layer and its features in step with the meshes
        else:
            self.status_label.setText(self._run_error or "stopped before the first iteration")
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    def _show_learned_psf(self, params: dict) -> str:
        """Copy learned Gaussian widths back into the widget; describe any learned PSF."""
        from deltamic_core.psf import psf_from_dict

        if params.get("type") == "GaussianPSF" and self.psf_panel.model() == "gaussian":
            self.psf_panel.set_sigma(params["sigma_um"])
        return psf_from_dict(params).describe()

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
        wait_warm_up(timeout_s)
        return self.propagator.shutdown(timeout_s) and self.runner.shutdown(timeout_s)

    def shutdown_now(self, *args) -> None:
        self.shutdown()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)


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


def _same(a, b) -> bool:
    """Two optional arrays hold the same values (None only equals None)."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))
