"""The deltaMic dock widget: seed meshes, pick a PSF, fit by inverse rendering, measure.

The widget is thin: meshes, PSFs, rendering, fitting and measurements all come from
``deltamic_core``. The fit runs in a napari ``thread_worker`` generator that yields one
:class:`_Step` per iteration; the worker never touches layers: the yielded values are applied
on the main thread (Qt queued signal), so the viewer stays responsive and Stop/close simply
ask the generator to quit after the current iteration.

World coordinates are micrometres: the Image layer's ``scale`` is its voxel spacing and the
Surface layers hold vertices in um, so image and meshes overlay without further transforms.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._layers import (
    VOXEL_UNITS_KEY,
    image_origin,
    image_spacing,
    layer_to_mesh,
    mesh_to_layer_data,
    vertex_cell_ids,
)
from ._qt_helpers import LayerCombo, LossPlot, spin

PSF_MODELS = ("Gaussian", "Gibson-Lanni", "Hanser + Zernike", "Measured (Image layer)")
SEED_SOURCES = ("Points", "Labels", "Surface")
DEVICES = ("auto", "cpu", "cuda")


def _show_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(f"deltaMic: {message}")


def _show_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(f"deltaMic: {message}")


def _guarded(method):
    """Run a button handler; any exception becomes an error notification, never a crash."""

    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            _show_error(str(exc) or type(exc).__name__)
            return None

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


@dataclass
class _Step:
    """What the worker hands to the main thread after each iteration (plain numpy, no tensors)."""

    iteration: int  # 1-based, over all levels
    loss: float  # NaN when rolled back
    verts: np.ndarray  # (V, 3) um, world coordinates
    faces: np.ndarray  # (F, 3)
    labels: np.ndarray | None  # (F, 2) or None
    level: int
    rolled_back: bool
    psf_params: dict  # the PSF model's as_dict() (changes with "learn PSF")
    seconds: float  # wall time of this iteration
    since_start: float  # wall time since Run was pressed (includes building the fit plan)


class DeltaMicWidget(QWidget):
    """Dock widget: image + seeds + PSF -> fitted cell meshes, labels and measurements."""

    #: the Surface layer is refreshed at most this often during a fit (seconds)
    update_interval_s = 0.3

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        import napari

        self.viewer = napari_viewer
        self._layers = napari.layers
        self._worker = None
        self._fit_holder: dict = {}
        self._closing = False
        self._last_step: _Step | None = None
        self._last_update = 0.0
        self._fit_layer = None
        self._run_started = 0.0
        self.first_update_s: float | None = None  # time from Run to the first surface update
        self.step_times: list[float] = []
        self.measurements: list[dict] = []
        self._measure_columns: list[str] = []

        # the controls scroll, so the dock fits small screens
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self._build_image_group())
        layout.addWidget(self._build_seed_group())
        layout.addWidget(self._build_psf_group())
        layout.addWidget(self._build_fit_group())
        layout.addWidget(self._build_results_group())
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self._on_image_changed()
        self._on_seed_source_changed()
        self._install_close_hooks()

    # ------------------------------------------------------------------ layout
    def _build_image_group(self) -> QGroupBox:
        box = QGroupBox("Image")
        form = QFormLayout(box)
        self.image_combo = LayerCombo(self.viewer, (self._layers.Image,))
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        form.addRow("layer", self.image_combo)
        row = QHBoxLayout()
        self.spacing_boxes = []
        for axis in "zyx":
            b = spin(1.0, 1e-3, 1e4, decimals=3, tooltip=f"voxel size along {axis} (um)")
            b.valueChanged.connect(self._on_spacing_edited)
            row.addWidget(QLabel(axis))
            row.addWidget(b)
            self.spacing_boxes.append(b)
        form.addRow("spacing (um)", row)
        return box

    def _build_seed_group(self) -> QGroupBox:
        box = QGroupBox("Initial mesh (seeds)")
        form = QFormLayout(box)
        self.seed_source = QComboBox()
        self.seed_source.addItems(SEED_SOURCES)
        self.seed_source.currentIndexChanged.connect(self._on_seed_source_changed)
        form.addRow("from", self.seed_source)
        self.seed_combo = LayerCombo(self.viewer, (self._layers.Points,))
        form.addRow("layer", self.seed_combo)
        self.radius_box = spin(3.0, 0.01, 1e4, decimals=2, suffix="um", tooltip="radius of the sphere at each point")
        form.addRow("radius", self.radius_box)
        self.edge_box = spin(0.8, 0.01, 1e3, decimals=2, suffix="um", tooltip="target triangle edge length")
        form.addRow("edge length", self.edge_box)
        row = QHBoxLayout()
        self.seed_button = QPushButton("Create mesh")
        self.seed_button.setToolTip("build the initial mesh from the seeds as a Surface layer")
        self.seed_button.clicked.connect(self.create_initial_mesh)
        self.place_button = QPushButton("Place mesh on image grid")
        self.place_button.setToolTip(
            "the Surface layer is in voxel units of its stack (a plain .rec): multiply by the image spacing")
        self.place_button.clicked.connect(self.place_on_image_grid)
        row.addWidget(self.seed_button)
        row.addWidget(self.place_button)
        form.addRow(row)
        return box

    def _build_psf_group(self) -> QGroupBox:
        box = QGroupBox("PSF")
        form = QFormLayout(box)
        self.psf_combo = QComboBox()
        self.psf_combo.addItems(PSF_MODELS)
        form.addRow("model", self.psf_combo)
        self.psf_pages = QStackedWidget()
        self.psf_pages.addWidget(self._gaussian_page())
        self.psf_pages.addWidget(self._gibson_lanni_page())
        self.psf_pages.addWidget(self._hanser_page())
        self.psf_pages.addWidget(self._measured_page())
        self.psf_combo.currentIndexChanged.connect(self.psf_pages.setCurrentIndex)
        form.addRow(self.psf_pages)
        row = QHBoxLayout()
        self.learn_psf = QCheckBox("learn PSF")
        self.learn_psf.setToolTip("optimise the PSF parameters together with the mesh")
        self.preview_button = QPushButton("Preview")
        self.preview_button.setToolTip("render the current mesh with the current PSF as an Image layer")
        self.preview_button.clicked.connect(self.preview)
        row.addWidget(self.learn_psf)
        row.addWidget(self.preview_button)
        form.addRow(row)
        return box

    def _gaussian_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.sigma_boxes = []
        for axis, default in zip("zyx", (0.6, 0.25, 0.25)):
            b = spin(default, 1e-3, 100.0, decimals=3, suffix="um", tooltip=f"Gaussian standard deviation along {axis}")
            form.addRow(f"sigma {axis}", b)
            self.sigma_boxes.append(b)
        return page

    def _optics_rows(self, form: QFormLayout) -> dict:
        boxes = {
            "na": spin(1.4, 0.05, 1.7, decimals=3, tooltip="numerical aperture"),
            "wavelength_um": spin(0.52, 0.2, 2.0, decimals=3, suffix="um", tooltip="emission wavelength in vacuum"),
            "n_immersion": spin(1.515, 1.0, 2.0, decimals=3, tooltip="refractive index of the immersion medium"),
        }
        form.addRow("NA", boxes["na"])
        form.addRow("wavelength", boxes["wavelength_um"])
        form.addRow("n immersion", boxes["n_immersion"])
        return boxes

    def _gibson_lanni_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.gl_boxes = self._optics_rows(form)
        self.gl_boxes["n_sample"] = spin(1.33, 1.0, 2.0, decimals=3, tooltip="refractive index of the sample")
        self.gl_boxes["depth_um"] = spin(0.0, 0.0, 500.0, decimals=2, suffix="um",
                                                  tooltip="depth of the cells below the coverslip")
        form.addRow("n sample", self.gl_boxes["n_sample"])
        form.addRow("depth", self.gl_boxes["depth_um"])
        return page

    def _hanser_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.hanser_boxes = self._optics_rows(form)
        self.zernike_edit = QLineEdit()
        self.zernike_edit.setPlaceholderText("NOLL=WAVES, e.g. 4=0.1 11=-0.05")
        self.zernike_edit.setToolTip("Zernike coefficients of the pupil phase (waves), by Noll index")
        form.addRow("Zernike", self.zernike_edit)
        return page

    def _measured_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.bead_combo = LayerCombo(self.viewer, (self._layers.Image,))
        self.bead_combo.setToolTip("an Image layer holding a bead (or averaged beads); its scale is its spacing")
        form.addRow("bead image", self.bead_combo)
        return page

    def _build_fit_group(self) -> QGroupBox:
        from deltamic_core.fit import FitConfig

        defaults = FitConfig()  # the widget starts from the core's defaults
        box = QGroupBox("Fit")
        form = QFormLayout(box)
        self.iter_box = QSpinBox()
        self.iter_box.setRange(1, 100000)
        self.iter_box.setValue(defaults.iterations_for_level(0))
        self.iter_box.setToolTip("iterations per resolution level")
        form.addRow("iterations", self.iter_box)
        self.coarse_box = QCheckBox("coarse-to-fine (2x binned image first)")
        self.coarse_box.setChecked(len(defaults.levels) > 1)
        form.addRow(self.coarse_box)
        self.step_box = spin(defaults.lr, 1e-4, 10.0, decimals=3, suffix="voxel",
                             tooltip="step size: roughly how far the surface moves per iteration at the start")
        form.addRow("step size", self.step_box)
        self.smooth_box = spin(defaults.lambda_smooth, 0.0, 1e5, decimals=2,
                               tooltip="smoothness lambda of the large-steps preconditioner")
        form.addRow("smoothness (lambda)", self.smooth_box)
        self.loss_combo = QComboBox()
        form.addRow("loss", self.loss_combo)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        form.addRow("device", self.device_combo)
        self.backend_combo = QComboBox()
        form.addRow("backend", self.backend_combo)
        self._fill_fit_choices()
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run_fit)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_fit)
        row.addWidget(self.run_button)
        row.addWidget(self.stop_button)
        form.addRow(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        form.addRow(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        form.addRow(self.status_label)
        self.loss_plot = LossPlot()
        form.addRow(self.loss_plot)
        return box

    def _fill_fit_choices(self) -> None:
        from deltamic_core.fit import FitConfig
        from deltamic_core.fit.config import LOSSES
        from deltamic_core.meshft import available_backends

        self.loss_combo.addItems(list(LOSSES))
        self.loss_combo.setCurrentText(FitConfig().loss)
        self.backend_combo.addItems(["auto", *available_backends()])

    def _build_results_group(self) -> QGroupBox:
        box = QGroupBox("Results")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.export_button = QPushButton("Export mesh")
        self.export_button.setToolTip("save the fitted mesh (.rec keeps the cell labels, or .ply/.obj)")
        self.export_button.clicked.connect(self._export_dialog)
        self.labels_button = QPushButton("Labels layer")
        self.labels_button.setToolTip("rasterise the fitted cells into an instance Labels layer on the image grid")
        self.labels_button.clicked.connect(self.make_labels)
        self.measure_button = QPushButton("Measure")
        self.measure_button.clicked.connect(self.measure)
        row.addWidget(self.export_button)
        row.addWidget(self.labels_button)
        row.addWidget(self.measure_button)
        lay.addLayout(row)
        self.table = QTableWidget(0, 0)
        self.table.setMinimumHeight(120)
        lay.addWidget(self.table)
        self.csv_button = QPushButton("Save table as CSV")
        self.csv_button.clicked.connect(self._csv_dialog)
        lay.addWidget(self.csv_button)
        return box

    # ------------------------------------------------------------------ image and spacing
    def _image_layer(self):
        layer = self.image_combo.layer()
        if layer is None:
            raise ValueError("no Image layer: open a 3D stack (z, y, x) first")
        if layer.rgb or layer.ndim not in (3, 4):
            raise ValueError(
                f"image layer {layer.name!r} has {layer.ndim} dimensions; a (Z, Y, X) stack or a (T, Z, Y, X) "
                "time series is needed")
        return layer

    def _on_image_changed(self, *args) -> None:
        layer = self.image_combo.layer()
        if layer is None or layer.ndim < 3:
            return
        for box, s in zip(self.spacing_boxes, layer.scale[-3:]):
            box.blockSignals(True)
            box.setValue(float(s))
            box.blockSignals(False)

    def spacing_um(self) -> tuple[float, float, float]:
        """The spacing (z, y, x) shown in the widget, in um."""
        return tuple(float(b.value()) for b in self.spacing_boxes)

    def _on_spacing_edited(self, *args) -> None:
        layer = self.image_combo.layer()
        if layer is None or layer.ndim < 3:
            return
        scale = np.array(layer.scale, dtype=float)
        scale[-3:] = self.spacing_um()
        layer.scale = scale

    def _image_volume(self, layer) -> np.ndarray:
        """The (Z, Y, X) float32 volume to fit: the current time point of a time series."""
        from deltamic_core._checks import check_memory

        data = layer.data
        if layer.ndim == 4:
            t = int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim == 4 else 0
            data = data[t]
        # lazy (dask/zarr) layers: refuse before materialising a volume that cannot fit
        check_memory(4.0 * float(np.prod(data.shape[-3:])), f"image layer {layer.name!r} as float32")
        vol = np.asarray(data, dtype=np.float32)
        if not np.isfinite(vol).all():
            raise ValueError(f"image layer {layer.name!r} contains NaN or Inf voxels")
        return vol

    # ------------------------------------------------------------------ seeds
    def _on_seed_source_changed(self, *args) -> None:
        source = self.seed_source.currentText()
        types = {"Points": (self._layers.Points,), "Labels": (self._layers.Labels,),
                 "Surface": (self._layers.Surface,)}[source]
        self.seed_combo.set_layer_types(types)
        self.radius_box.setEnabled(source == "Points")
        self.edge_box.setEnabled(source in ("Points", "Labels"))
        self.place_button.setEnabled(source == "Surface")

    def seed_mesh(self):
        """The initial mesh (um, world coordinates) from the chosen seed layer."""
        from deltamic_core import geometry

        source = self.seed_source.currentText()
        layer = self.seed_combo.layer()
        if layer is None:
            raise ValueError(f"no seeds: add a {source} layer (or pick another seed source)")
        if source == "Points":
            if len(layer.data) == 0:
                raise ValueError(f"no seeds: Points layer {layer.name!r} is empty; click one point per cell")
            if layer.ndim < 3:
                raise ValueError(f"Points layer {layer.name!r} is 2D; seeds need (z, y, x) coordinates")
            centers = np.asarray(layer.data)[:, -3:] * np.asarray(layer.scale[-3:]) + np.asarray(layer.translate[-3:])
            radius = float(self.radius_box.value())
            return geometry.seed_spheres(centers, np.full(len(centers), radius), edge_um=float(self.edge_box.value()))
        if source == "Labels":
            if layer.ndim != 3:
                raise ValueError(f"Labels layer {layer.name!r} has {layer.ndim} dimensions; a (Z, Y, X) label image is needed")
            labels = np.asarray(layer.data)
            if not np.any(labels):
                raise ValueError(f"no seeds: Labels layer {layer.name!r} is empty")
            mesh = geometry.meshes_from_labels(labels, image_spacing(layer), float(self.edge_box.value()))
            origin = np.asarray(image_origin(layer))
            return mesh.copy(verts=mesh.verts + origin) if np.any(origin) else mesh
        mesh = layer_to_mesh(layer)
        if layer.metadata.get(VOXEL_UNITS_KEY):
            raise ValueError(
                f"Surface layer {layer.name!r} is in voxel units (a .rec without spacing): press "
                "'Place mesh on image grid' first")
        return mesh

    @_guarded
    def create_initial_mesh(self, *args):
        """Build the initial mesh from the seeds and show it as a Surface layer."""
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
    def psf_spec(self):
        """The PSF chosen in the widget as the pipeline's PSFSpec (the CLI's --psf options)."""
        from deltamic_core.pipeline import PSFSpec

        model = self.psf_combo.currentText()
        learn = bool(self.learn_psf.isChecked())
        if model == "Gaussian":
            return PSFSpec("gaussian", {"sigma_um": tuple(b.value() for b in self.sigma_boxes)}, learn)
        if model == "Gibson-Lanni":
            return PSFSpec("gibson-lanni", {k: b.value() for k, b in self.gl_boxes.items()}, learn)
        params = {k: b.value() for k, b in self.hanser_boxes.items()}
        if self.zernike_edit.text().strip():
            params["zernike"] = self.zernike_edit.text()
        return PSFSpec("hanser", params, learn)

    def make_psf(self):
        """The PSF model chosen in the widget, built by the pipeline's ``make_psf``."""
        from deltamic_core import pipeline
        from deltamic_core.psf import MeasuredPSF

        if self.psf_combo.currentText() != "Measured (Image layer)":
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

        image = self._image_layer()
        mesh = self._current_mesh()
        spacing = self.spacing_um()
        origin = image_origin(image)
        shape = tuple(image.data.shape[-3:])
        worker = create_worker(_render_preview, mesh, shape, spacing, origin, self.make_psf(),
                               self.backend_combo.currentText(), _start_thread=False)
        name = f"{image.name} preview"

        def show(rendered):
            if name in self.viewer.layers:
                self.viewer.layers[name].data = rendered
            else:
                self.viewer.add_image(rendered, name=name, scale=spacing, translate=origin,
                                      colormap="magenta", blending="additive")
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
        """A ``deltamic_core.fit.FitConfig`` from the widget's settings."""
        import torch

        from deltamic_core.fit import FitConfig

        device = self.device_combo.currentText()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was chosen but torch sees no CUDA GPU: choose 'cpu' or 'auto'")
        return FitConfig(
            iterations=int(self.iter_box.value()),
            levels=(2, 1) if self.coarse_box.isChecked() else (1,),
            lr=float(self.step_box.value()),
            lambda_smooth=float(self.smooth_box.value()),
            loss=self.loss_combo.currentText(),
            device=device,
            backend=self.backend_combo.currentText(),
            learn_psf=bool(self.learn_psf.isChecked()),
        )

    def _check_inside(self, mesh, vol_shape, spacing, origin) -> None:
        lo = np.asarray(origin) - 0.5 * np.asarray(spacing)
        hi = np.asarray(origin) + (np.asarray(vol_shape) - 0.5) * np.asarray(spacing)
        outside = np.any((mesh.verts < lo) | (mesh.verts > hi), axis=1)
        if outside.all():
            raise ValueError(
                f"the mesh lies outside the image (mesh spans {mesh.verts.min(0).round(2).tolist()} .. "
                f"{mesh.verts.max(0).round(2).tolist()} um, image {lo.round(2).tolist()} .. {hi.round(2).tolist()} um): "
                "check the spacing, or place the mesh on the image grid")
        if outside.any():
            raise ValueError(f"{int(outside.sum())} of {len(outside)} mesh vertices lie outside the image: "
                             "move the seeds inside or crop less")

    @_guarded
    def run_fit(self, *args):
        """Start a fit in a background thread; the Surface layer updates as it goes."""
        if self._worker is not None:
            raise ValueError("a fit is already running: stop it first")
        image = self._image_layer()
        vol = self._image_volume(image)
        spacing = self.spacing_um()
        origin = np.asarray(image_origin(image))
        mesh = self.seed_mesh()
        self._check_inside(mesh, vol.shape, spacing, origin)
        psf = self.make_psf()
        config = self.fit_config()
        n_iter = config.total_iterations

        self._fit_layer = self._show_mesh(mesh, self._fit_layer_name())
        self._last_step = None
        self.step_times = []
        self.first_update_s = None
        self.loss_plot.clear()
        self.progress.setRange(0, n_iter)
        self.progress.setValue(0)
        self.status_label.setText("building the render plan...")
        self._run_started = time.perf_counter()
        self._last_update = 0.0
        self._start_worker(vol, spacing, origin, mesh, psf, config)
        return self._worker

    def _start_worker(self, vol, spacing, origin, mesh, psf, config) -> None:
        from napari.qt.threading import create_worker

        self._fit_holder = {}
        worker = create_worker(_fit_steps, vol, spacing, origin, mesh, psf, config, self._run_started,
                               self._fit_holder, _start_thread=False)
        worker.yielded.connect(self._on_step)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        # set from the worker thread itself, so shutdown() can wait without an event loop
        self._thread_done = threading.Event()
        worker.finished.connect(self._thread_done.set, Qt.DirectConnection)
        self._worker = worker
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        worker.start()

    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def stop_fit(self, *args) -> None:
        """Ask the fit to stop after the current iteration; the last good mesh stays."""
        if self._worker is not None:
            self.status_label.setText("stopping after this iteration...")
            self._worker.quit()

    def _on_step(self, step: _Step) -> None:
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
        now = time.perf_counter()
        if now - self._last_update >= self.update_interval_s or step.iteration == self.progress.maximum():
            self._apply_step(step)
            self._last_update = time.perf_counter()
        per_it = float(np.median(self.step_times))
        self.status_label.setText(f"iteration {step.iteration}/{self.progress.maximum()}  loss {step.loss:.4g}  "
                                  f"{per_it:.2f} s/iteration")

    def _apply_step(self, step: _Step) -> None:
        layer = self._fit_layer
        if layer is None or layer not in self.viewer.layers:
            return  # the user deleted the layer: keep fitting, show nothing
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
            msg = f"not enough memory for this fit ({msg}): crop the image, use fewer/larger triangles, or a smaller band"
        _show_error(f"fit failed: {msg}")

    def _on_finished(self) -> None:
        self._worker = None
        self._fit_holder.clear()  # release the Fitter (solver, render plan) now
        if self._closing:
            return
        if self._last_step is not None:
            self._apply_step(self._last_step)  # the last good mesh, also after Stop
            text = f"done: {self._last_step.iteration} iterations, loss {self._last_step.loss:.4g}"
            if self.learn_psf.isChecked():
                text += "\nlearned " + self._show_learned_psf(self._last_step.psf_params)
            self.status_label.setText(text)
        else:
            self.status_label.setText("stopped before the first iteration")
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    def _show_learned_psf(self, params: dict) -> str:
        """Copy learned Gaussian widths back into the widget; describe any learned PSF."""
        from deltamic_core.psf import psf_from_dict

        if params.get("type") == "GaussianPSF" and self.psf_combo.currentText() == "Gaussian":
            for box, v in zip(self.sigma_boxes, params["sigma_um"]):
                box.setValue(float(v))
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

    @_guarded
    def make_labels(self, *args):
        """Rasterise the fitted cells into an instance Labels layer on the image grid."""
        from deltamic_core.geometry import label_image

        image = self._image_layer()
        mesh = self.result_mesh()
        spacing = self.spacing_um()
        origin = image_origin(image)
        labels = label_image(mesh, tuple(image.data.shape[-3:]), spacing, origin)
        name = f"{image.name} cells"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = labels
            return self.viewer.layers[name]
        return self.viewer.add_labels(labels, name=name, scale=spacing, translate=origin)

    @_guarded
    def measure(self, *args):
        """Per-cell volume, area, sphericity and contacts of the fitted mesh, shown in the table."""
        from deltamic_core.pipeline.outputs import cell_table

        rows = cell_table(self.result_mesh())
        self.measurements = rows
        self._fill_table(rows)
        return rows

    def _fill_table(self, rows: list[dict]) -> None:
        columns = list(rows[0].keys()) if rows else []
        self._measure_columns = columns
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels(columns)
        for i, row in enumerate(rows):
            for j, col in enumerate(columns):
                v = row[col]
                text = f"{v:.4g}" if isinstance(v, float) else str(v)
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()

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

    # ------------------------------------------------------------------ shutdown
    def _install_close_hooks(self) -> None:
        """Stop the fit when the viewer's window closes (children get no closeEvent of their own)."""
        from qtpy.QtWidgets import QApplication

        try:
            qt_window = self.viewer.window._qt_window
        except AttributeError:  # no Qt window (headless viewer): nothing to watch
            qt_window = None
        if qt_window is not None:
            self._close_watcher = _CloseWatcher(self.shutdown_now, qt_window)
            qt_window.installEventFilter(self._close_watcher)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown_now)

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Stop a running fit and wait (up to ``timeout_s``) for its thread to end.

        Safe inside the viewer's close sequence: it processes no Qt events (napari is deleting
        its widgets then); it blocks on the worker thread's own finished flag instead.
        Returns True if no fit is running any more.
        """
        self._closing = True
        worker = self._worker
        if worker is None:
            return True
        try:
            worker.yielded.disconnect(self._on_step)
        except (TypeError, RuntimeError):
            pass
        worker.quit()
        if self._thread_done.wait(timeout_s):
            self._worker = None
            self._fit_holder.clear()
            return True
        return False

    def shutdown_now(self, *args) -> None:
        self.shutdown()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)


class _CloseWatcher(QObject):
    """Event filter calling ``callback`` when the watched window receives a Close event."""

    def __init__(self, callback, parent):
        super().__init__(parent)
        self._callback = callback

    def eventFilter(self, obj, event):
        if event.type() == QEvent.Close:
            self._callback()
        return False


def _render_preview(mesh, shape, spacing, origin, psf, backend) -> np.ndarray:
    """Worker body of Preview: the noise-free image of ``mesh`` (membrane intensities) on the grid."""
    from deltamic_core.pipeline import render_mesh_image

    return render_mesh_image(mesh, shape, spacing, psf, origin, backend=backend)


def _fit_steps(vol, spacing, origin, init_mesh, psf, config, t0, holder: dict):
    """Worker body: build the Fitter, then yield one :class:`_Step` per iteration until done.

    Runs in a background thread and touches no layer. The Fitter lives only in ``holder``
    (no local reference survives a ``yield``), so the widget can release it, with its solver
    and render plan, by clearing ``holder`` even while the quit generator stays suspended.
    """
    from deltamic_core.fit import Fitter

    holder["fitter"] = Fitter(vol, spacing, init_mesh, psf, config, origin_um=tuple(origin))
    while "fitter" in holder and not holder["fitter"].done:
        t_start = time.perf_counter()
        res = holder["fitter"].step()
        now = time.perf_counter()
        labels = None if res.labels is None else np.asarray(res.labels, dtype=np.int32)
        step = _Step(int(res.iteration), float(res.loss), np.asarray(res.verts, dtype=np.float64),
                     np.asarray(res.faces, dtype=np.int64), labels, int(res.level), bool(res.rolled_back),
                     dict(res.psf_params), now - t_start, now - t0)
        del res
        yield step
