"""The dock widget's panels: Qt controls that read and write the options of a FitJob.

Each panel holds its controls as attributes and turns them into the pipeline's terms
(``spacing_um()``, ``init_source()``, ``psf_spec()``, ``fit_options()``); it computes nothing.
Defaults are the pipeline's (the CLI's): iterations and levels of ``FitConfig``, a Gaussian
of one voxel per axis, seed radii estimated from the image, the fitter's triangle size.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from ._qt_helpers import LayerCombo, LossPlot, spin

#: widget label -> pipeline PSF model name (the CLI's --psf choices)
PSF_MODELS = {
    "Gaussian": "gaussian",
    "Gibson-Lanni": "gibson-lanni",
    "Hanser + Zernike": "hanser",
    "Measured (Image layer)": None,
}
AUTO_SEEDS = "Auto (bright objects)"  # the CLI's --auto-seeds (interior stains)
SEED_SOURCES = ("Points", "Labels", "Surface", AUTO_SEEDS)
STAINS = ("membrane", "interior", "both")  # the CLI's --stain choices (FitJob.stain)
DEVICES = ("auto", "cpu", "cuda")


class ImagePanel(QGroupBox):
    """The image layer and its voxel size (z, y, x) in um (the layer's scale)."""

    def __init__(self, viewer, layers):
        super().__init__("Image")
        form = QFormLayout(self)
        self.image_combo = LayerCombo(viewer, (layers.Image,))
        form.addRow("layer", self.image_combo)
        row = QHBoxLayout()
        self.spacing_boxes = []
        for axis in "zyx":
            b = spin(1.0, 1e-3, 1e3, decimals=3, tooltip=f"voxel size along {axis} (um)")
            row.addWidget(QLabel(axis))
            row.addWidget(b, 1)
            self.spacing_boxes.append(b)
        form.addRow(QLabel("voxel size (um)"))
        form.addRow(row)
        self.spacing_note = QLabel("")
        self.spacing_note.setWordWrap(True)
        form.addRow(self.spacing_note)

    def spacing_um(self) -> tuple[float, float, float]:
        return tuple(float(b.value()) for b in self.spacing_boxes)

    def show_note(self, text: str) -> None:
        """Where the voxel size came from (the file, the layer, assumed)."""
        self.spacing_note.setText(text)

    def show_spacing(self, spacing) -> None:
        for box, s in zip(self.spacing_boxes, spacing):
            box.blockSignals(True)
            box.setValue(float(s))
            box.blockSignals(False)


class SeedPanel(QGroupBox):
    """Where the initial meshes come from: a Points, Labels or Surface layer."""

    def __init__(self, viewer, layers):
        super().__init__("Initial mesh (seeds)")
        self._layers = layers
        form = QFormLayout(self)
        self.stain_combo = QComboBox()
        self.stain_combo.addItems(list(STAINS))
        self.stain_combo.setToolTip(
            "what is labelled (as --stain): membranes, the interior of the objects (nuclei, cytoplasm), or both"
        )
        form.addRow("stain", self.stain_combo)
        self.seed_source = QComboBox()
        self.seed_source.addItems(SEED_SOURCES)
        form.addRow("from", self.seed_source)
        self.seed_combo = LayerCombo(viewer, (layers.Points,))
        form.addRow("layer", self.seed_combo)
        self.radius_box = spin(
            0.0,
            0.0,
            1e4,
            decimals=2,
            suffix="um",
            tooltip="radius of the sphere at each point (estimated from the image when 0)",
        )
        self.radius_box.setSpecialValueText("estimated")
        form.addRow("radius", self.radius_box)
        self.edge_box = spin(
            0.0, 0.0, 1e3, decimals=2, suffix="um", tooltip="target triangle edge length (the fitter's choice when 0)"
        )
        self.edge_box.setSpecialValueText("default")
        form.addRow("edge length", self.edge_box)
        self.click_button = QPushButton("Click to seed")
        self.click_button.setToolTip(
            "add a seeds Points layer in add mode: each click on the image adds a cell, its radius "
            "estimated from the image; moving or deleting a point updates the initial mesh"
        )
        form.addRow(self.click_button)
        self.seed_status = QLabel("")
        self.seed_status.setWordWrap(True)
        form.addRow(self.seed_status)
        row = QHBoxLayout()
        self.seed_button = QPushButton("Create mesh")
        self.seed_button.setToolTip("build the initial mesh from the seeds as a Surface layer")
        self.place_button = QPushButton("Place on image grid")
        self.place_button.setToolTip(
            "the Surface layer is in voxel units of its stack (a plain .rec): multiply by the image spacing"
        )
        row.addWidget(self.seed_button)
        row.addWidget(self.place_button)
        form.addRow(row)
        self.seed_source.currentIndexChanged.connect(self._on_source_changed)
        self._on_source_changed()

    def _on_source_changed(self, *args) -> None:
        source = self.seed_source.currentText()
        types = {
            "Points": (self._layers.Points,),
            "Labels": (self._layers.Labels,),
            "Surface": (self._layers.Surface,),
            AUTO_SEEDS: (),
        }[source]
        self.seed_combo.set_layer_types(types)
        self.seed_combo.setEnabled(bool(types))
        self.radius_box.setEnabled(source == "Points")
        self.edge_box.setEnabled(source in ("Points", "Labels", AUTO_SEEDS))
        self.place_button.setEnabled(source == "Surface")

    def show_message(self, text: str) -> None:
        """What the seed rules did to the last change (refused, shrunk, how many seeds)."""
        self.seed_status.setText(text)

    def stain(self) -> str:
        """The FitJob's stain (the CLI's --stain)."""
        return self.stain_combo.currentText()

    def radius_um(self) -> float | None:
        """The sphere radius, or None: estimated from the image (as ``deltamic fit --seeds``)."""
        return float(self.radius_box.value()) or None

    def edge_um(self) -> float | None:
        """The target triangle edge, or None: the fitter's default (as without ``--edge``)."""
        return float(self.edge_box.value()) or None


class PSFPanel(QGroupBox):
    """The PSF model and its parameters (the CLI's --psf options), learn flag and Preview."""

    def __init__(self, viewer, layers):
        super().__init__("PSF")
        form = QFormLayout(self)
        self.psf_combo = QComboBox()
        self.psf_combo.addItems(list(PSF_MODELS))
        form.addRow("model", self.psf_combo)
        self.psf_pages = QStackedWidget()
        self.psf_pages.addWidget(self._gaussian_page())
        self.psf_pages.addWidget(self._gibson_lanni_page())
        self.psf_pages.addWidget(self._hanser_page())
        self.psf_pages.addWidget(self._measured_page(viewer, layers))
        self.psf_combo.currentIndexChanged.connect(self.psf_pages.setCurrentIndex)
        form.addRow(self.psf_pages)
        row = QHBoxLayout()
        self.learn_psf = QCheckBox("learn PSF")
        self.learn_psf.setToolTip("optimise the PSF parameters together with the mesh")
        self.preview_button = QPushButton("Preview")
        self.preview_button.setToolTip("render the current mesh with the current PSF as an Image layer")
        row.addWidget(self.learn_psf)
        row.addWidget(self.preview_button)
        form.addRow(row)

    def _gaussian_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.sigma_voxel = QCheckBox("one voxel per axis")
        self.sigma_voxel.setToolTip("sigma = the voxel size on each axis (the default of deltamic fit)")
        self.sigma_voxel.setChecked(True)
        form.addRow(self.sigma_voxel)
        self.sigma_boxes = []
        for axis in "zyx":
            b = spin(1.0, 1e-3, 100.0, decimals=3, suffix="um", tooltip=f"Gaussian standard deviation along {axis}")
            b.setEnabled(False)
            form.addRow(f"sigma {axis}", b)
            self.sigma_boxes.append(b)
        self.sigma_voxel.toggled.connect(lambda on: [b.setEnabled(not on) for b in self.sigma_boxes])
        return page

    def set_sigma(self, sigma_um) -> None:
        """Show explicit Gaussian widths (unchecks 'one voxel per axis')."""
        self.sigma_voxel.setChecked(False)
        for box, v in zip(self.sigma_boxes, sigma_um):
            box.setValue(float(v))

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
        self.gl_boxes["depth_um"] = spin(
            0.0, 0.0, 500.0, decimals=2, suffix="um", tooltip="depth of the cells below the coverslip"
        )
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
        self.zernike_edit.setToolTip("Zernike coefficients of the pupil phase (waves), by Noll index (as --zernike)")
        form.addRow("Zernike", self.zernike_edit)
        return page

    def _measured_page(self, viewer, layers) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.bead_combo = LayerCombo(viewer, (layers.Image,))
        self.bead_combo.setToolTip("an Image layer holding a bead (or averaged beads); its scale is its spacing")
        form.addRow("bead image", self.bead_combo)
        return page

    def model(self) -> str | None:
        """The pipeline's model name; None for a measured PSF from a layer."""
        return PSF_MODELS[self.psf_combo.currentText()]

    def psf_spec(self):
        """The PSF as the pipeline's PSFSpec (what the CLI's --psf options make)."""
        from deltamic_core.pipeline import PSFSpec

        model = self.model()
        learn = bool(self.learn_psf.isChecked())
        if model == "gaussian":
            params = {} if self.sigma_voxel.isChecked() else {"sigma_um": tuple(b.value() for b in self.sigma_boxes)}
        elif model == "gibson-lanni":
            params = {k: b.value() for k, b in self.gl_boxes.items()}
        elif model == "hanser":
            params = {k: b.value() for k, b in self.hanser_boxes.items()}
            if self.zernike_edit.text().strip():
                params["zernike"] = self.zernike_edit.text()
        else:
            raise ValueError("a measured PSF is built from its bead layer, not from a PSFSpec")
        return PSFSpec(model, params, learn)


class FitPanel(QGroupBox):
    """Fit options (FitConfig fields; 'default' means the pipeline's), Run/Stop, progress, loss."""

    def __init__(self):
        from deltamic_core.fit import FitConfig
        from deltamic_core.fit.config import LOSSES
        from deltamic_core.meshft import available_backends

        super().__init__("Fit")
        self.defaults = FitConfig()
        form = QFormLayout(self)
        self.iter_box = QSpinBox()
        self.iter_box.setRange(0, 100000)
        self.iter_box.setValue(0)
        self.show_stain_defaults("membrane")
        self.iter_box.setToolTip("iterations per resolution level (as --iterations)")
        form.addRow("iterations", self.iter_box)
        self.levels_edit = QLineEdit(" ".join(str(f) for f in self.defaults.levels))
        self.levels_edit.setToolTip("coarse-to-fine downsampling factors ending with 1 (as --levels)")
        form.addRow("levels", self.levels_edit)
        self.step_box = spin(
            self.defaults.lr,
            1e-4,
            10.0,
            decimals=3,
            suffix="voxel",
            tooltip="step size: roughly how far the surface moves per iteration at the start",
        )
        form.addRow("step size", self.step_box)
        self.smooth_box = spin(
            self.defaults.lambda_smooth,
            0.0,
            1e5,
            decimals=2,
            tooltip="smoothness lambda of the large-steps preconditioner",
        )
        form.addRow("smoothness (lambda)", self.smooth_box)
        self.loss_combo = QComboBox()
        self.loss_combo.addItems(list(LOSSES))
        self.loss_combo.setCurrentText(self.defaults.loss)
        form.addRow("loss", self.loss_combo)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        form.addRow("device", self.device_combo)
        self.backend_combo = QComboBox()
        self.backend_combo.addItems(["auto", *available_backends()])
        form.addRow("backend", self.backend_combo)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        row.addWidget(self.run_button)
        row.addWidget(self.stop_button)
        form.addRow(row)
        row = QHBoxLayout()
        self.copy_button = QPushButton("Copy as command")
        self.copy_button.setToolTip("copy the equivalent `deltamic fit ...` command line to the clipboard")
        self.defaults_button = QPushButton("Restore defaults")
        self.defaults_button.setToolTip("put every setting back to the command line's default")
        row.addWidget(self.copy_button)
        row.addWidget(self.defaults_button)
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

    def levels(self) -> tuple[int, ...]:
        text = self.levels_edit.text().replace(",", " ").split()
        try:
            return tuple(int(t) for t in text)
        except ValueError:
            raise ValueError(
                f"levels: expected downsampling factors like '4 2 1', got {self.levels_edit.text()!r}"
            ) from None

    def device(self) -> str:
        import torch

        device = self.device_combo.currentText()
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device

    def show_stain_defaults(self, stain: str) -> None:
        """Say in the iterations box what 'default' runs for ``stain`` (the pipeline's rule:
        interior-stained fits have their own counts)."""
        from deltamic_core.pipeline.job import default_iterations

        self.iter_box.setSpecialValueText(f"default ({' / '.join(map(str, default_iterations(stain)))})")

    def fit_options(self) -> dict:
        """FitJob fields; options left at the pipeline's default are None (not set)."""
        d = self.defaults
        lr, smooth = float(self.step_box.value()), float(self.smooth_box.value())
        levels = self.levels()
        return {
            "iterations": int(self.iter_box.value()) or None,
            "levels": None if levels == tuple(d.levels) else levels,
            "loss": None if self.loss_combo.currentText() == d.loss else self.loss_combo.currentText(),
            # a spin box shows the default rounded: unchanged means the default itself
            "lr": None if lr == round(d.lr, self.step_box.decimals()) else lr,
            "lambda_smooth": None if smooth == round(d.lambda_smooth, self.smooth_box.decimals()) else smooth,
            "device": self.device(),
            "backend": self.backend_combo.currentText(),
        }


class ResultsPanel(QGroupBox):
    """Export, label image, measurements table and CSV."""

    def __init__(self):
        super().__init__("Results")
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.export_button = QPushButton("Export mesh")
        self.export_button.setToolTip("save the fitted mesh (.rec keeps the cell labels, or .ply/.obj)")
        self.labels_button = QPushButton("Labels layer")
        self.labels_button.setToolTip("rasterise the fitted cells into an instance Labels layer on the image grid")
        self.measure_button = QPushButton("Measure")
        row.addWidget(self.export_button)
        row.addWidget(self.labels_button)
        row.addWidget(self.measure_button)
        lay.addLayout(row)
        self.table = QTableWidget(0, 0)
        self.table.setMinimumHeight(120)
        lay.addWidget(self.table)
        self.csv_button = QPushButton("Save table as CSV")
        lay.addWidget(self.csv_button)
        row = QHBoxLayout()
        self.save_all_button = QPushButton("Save all")
        self.save_all_button.setToolTip(
            "write the result folder of `deltamic fit --out DIR`: mesh.rec/.ply, labels.tif, "
            "measurements.csv, contacts.csv, report.json"
        )
        self.open_result_button = QPushButton("Open result")
        self.open_result_button.setToolTip("load a result folder: image, labels with measurements, meshes, settings")
        row.addWidget(self.save_all_button)
        row.addWidget(self.open_result_button)
        lay.addLayout(row)

    def show_rows(self, rows: list[dict], columns) -> None:
        from qtpy.QtWidgets import QTableWidgetItem

        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels(list(columns))
        for i, row in enumerate(rows):
            for j, col in enumerate(columns):
                v = row[col]
                text = f"{v:.4g}" if isinstance(v, float) else str(v)
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
