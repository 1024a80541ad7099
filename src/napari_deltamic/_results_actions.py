"""The widget's results side: export, Labels + measurements, CSV, Save all / Open result,
Copy as command and the remembered settings. Files are written by the pipeline's outputs
under the CLI's rules (staging, ownership manifest)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ._layers import UNITS_ZYX, image_origin, labels_colormap, labels_features, layer_to_mesh
from ._notify import _guarded, _show_info, _show_warning, start_worker


class ResultsMixin:
    """Part of :class:`._widget.DeltaMicWidget` (uses its ``viewer``, panels and runner)."""

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
        mesh = self.result_mesh()
        image = self._image_layer() if labels else None
        grid = None
        if image is not None:
            grid = (tuple(image.data.shape[-3:]), self.spacing_um(), image_origin(image), image.name)

        def done(result):
            if not self._closing:
                on_done(*result)

        buttons = (self.labels_button, self.measure_button)
        return start_worker(self, "results", buttons, _rasterise_and_measure, mesh, grid, on_done=done, what="results")

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
        from deltamic_core.pipeline.outputs import check_replaceable

        mesh = self.result_mesh()
        image = self._image_layer()
        src = self._image_file(image)
        check_replaceable(out, overwrite=overwrite, inputs=[src] if src else [])
        grid = (tuple(image.data.shape[-3:]), self.spacing_um(), image_origin(image))

        def done(path):
            self.saved_result = path
            _show_info(f"result written to {path}")

        return start_worker(
            self,
            "save all",
            (self.save_all_button,),
            _write_result,
            str(out),
            mesh,
            grid,
            self._report(mesh),
            overwrite,
            on_done=done,
            what="Save all",
        )

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

        notes: list[str] = []
        self.apply_settings(settings_from_command(words, self._default_settings, notes))
        for note in notes:
            _show_warning(note)

    @_guarded
    def restore_defaults(self, *args) -> None:
        """Every control back to its default (the command line's)."""
        self.apply_settings(self._default_settings)

    def save_settings(self) -> None:
        from ._settings import save_settings

        save_settings(self.settings())


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
