"""The widget's image side: which layer is fitted, its voxel size and where that came from
(the file's metadata, the layer's scale, typed in the widget, or assumed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._layers import SPACING_KEY, units_for
from ._notify import _show_warning


class ImageSourceMixin:
    """Part of :class:`._widget.DeltaMicWidget` (uses its ``viewer``, ``image_combo`` and
    ``image_panel``)."""

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

    def _image_volume(self, layer, *, materialise: bool = True) -> np.ndarray:
        """The (Z, Y, X) float32 volume to fit: the current time point of a time series (as the
        layer holds it, e.g. lazily, with ``materialise=False``)."""
        from deltamic_core._checks import check_memory

        data = layer.data
        if layer.ndim == 4:
            t = int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim == 4 else 0
            data = data[t]
        # lazy (dask/zarr) layers: refuse before materialising a volume that cannot fit
        check_memory(4.0 * float(np.prod(data.shape[-3:])), f"image layer {layer.name!r} as float32")
        return np.asarray(data, dtype=np.float32) if materialise else data

    # ------------------------------------------------------------------ result folder, command line
    def _image_file(self, layer) -> str | None:
        """The file an Image layer was read from (napari's ``source.path``, or our reader's)."""
        path = getattr(getattr(layer, "source", None), "path", None) or layer.metadata.get("source")
        return str(path) if path else None


def _file_spacing(path: str):
    """Worker body: the voxel size (z, y, x) um of a TIFF and per axis where it came from."""
    import warnings

    from deltamic_core.io import read_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said by the widget, once, as a notification
        _, meta = read_image(path)
    return tuple(float(s) for s in meta.spacing_um), tuple(meta.spacing_sources)
