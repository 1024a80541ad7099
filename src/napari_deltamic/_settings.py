"""The widget's settings: read from and written to its controls, remembered between sessions.

The settings are the controls' values as plain data (a small JSON file in the user config
directory, ``platformdirs.user_config_dir("napari-deltamic")/widget-settings.json``;
``$NAPARI_DELTAMIC_CONFIG_DIR`` overrides the directory). A control missing from the file
keeps its default; an unreadable file is ignored (the defaults are used, nothing crashes).
``settings_from_command`` turns a ``deltamic fit`` command line (a result's ``report.json``)
into settings with the CLI's own parser.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

SETTINGS_NAME = "widget-settings.json"
VERSION = 1

#: remembered controls: settings key -> widget attribute (a control, a list or a dict of them)
CONTROLS = {
    "stain": "stain_combo",
    "seed_radius_um": "radius_box",
    "edge_um": "edge_box",
    "psf": "psf_combo",
    "sigma_one_voxel": "sigma_voxel",
    "sigma_um": "sigma_boxes",
    "gibson_lanni": "gl_boxes",
    "hanser": "hanser_boxes",
    "zernike": "zernike_edit",
    "learn_psf": "learn_psf",
    "iterations": "iter_box",
    "levels": "levels_edit",
    "step": "step_box",
    "smoothness": "smooth_box",
    "loss": "loss_combo",
    "device": "device_combo",
    "backend": "backend_combo",
}


def settings_path() -> Path:
    env = os.environ.get("NAPARI_DELTAMIC_CONFIG_DIR")
    if env:
        return Path(env) / SETTINGS_NAME
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-deltamic")) / SETTINGS_NAME


def _get(control):
    if isinstance(control, (list, tuple)):
        return [_get(c) for c in control]
    if isinstance(control, dict):
        return {k: _get(c) for k, c in control.items()}
    if isinstance(control, QCheckBox):
        return bool(control.isChecked())
    if isinstance(control, QComboBox):
        return control.currentText()
    if isinstance(control, QLineEdit):
        return control.text()
    if isinstance(control, QSpinBox):
        return int(control.value())
    if isinstance(control, QDoubleSpinBox):
        return float(control.value())
    raise TypeError(f"not a remembered control: {type(control).__name__}")


def _set(control, value) -> None:
    if isinstance(control, (list, tuple)):
        for c, v in zip(control, value):
            _set(c, v)
    elif isinstance(control, dict):
        for k, v in dict(value).items():
            if k in control:
                _set(control[k], v)
    elif isinstance(control, QCheckBox):
        control.setChecked(bool(value))
    elif isinstance(control, QComboBox):
        idx = control.findText(str(value))
        if idx >= 0:  # a choice that no longer exists (e.g. no CUDA here) keeps the current one
            control.setCurrentIndex(idx)
    elif isinstance(control, QLineEdit):
        control.setText(str(value))
    elif isinstance(control, QSpinBox):
        control.setValue(int(value))
    elif isinstance(control, QDoubleSpinBox):
        control.setValue(float(value))


def read_controls(widget) -> dict:
    return {key: _get(getattr(widget, attr)) for key, attr in CONTROLS.items()}


def write_controls(widget, values: dict) -> None:
    for key, attr in CONTROLS.items():
        if key in values:
            try:
                _set(getattr(widget, attr), values[key])
            except (TypeError, ValueError):
                pass  # a malformed remembered value keeps the control as it is


def load_settings() -> dict:
    """The remembered settings ({} when there are none or the file is unreadable)."""
    try:
        data = json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return {}
    values = data.get("settings")
    return values if isinstance(values, dict) else {}


def save_settings(values: dict) -> None:
    """Remember ``values`` (atomically; a read-only config directory is not an error)."""
    from deltamic_core.io import atomic_write

    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as fh:
            fh.write(json.dumps({"version": VERSION, "settings": values}, indent=1))
    except OSError:
        pass


def settings_from_command(words, defaults: dict, notes: list | None = None) -> dict:
    """Settings from a ``deltamic fit ...`` command line, parsed by the CLI's parser; what the
    line does not set is the default. What the controls cannot hold is said in ``notes``."""
    from deltamic_core.pipeline.command_line import build_parser

    from ._panels import PSF_MODELS

    words = [str(w) for w in words]
    if words and words[0] != "fit":
        words = words[1:]  # the program name
    args = build_parser().parse_args(words)
    out = json.loads(json.dumps(defaults))
    out["stain"] = args.stain
    out["learn_psf"] = bool(args.learn_psf)
    counts = args.iterations or [0]
    out["iterations"] = int(counts[0]) if len(counts) == 1 else 0
    if len(counts) > 1 and notes is not None:
        notes.append(
            f"the result was fitted with --iterations {' '.join(str(c) for c in counts)} (one count per level); "
            "the widget sets one count for every level, so it shows the default"
        )
    if args.levels:
        out["levels"] = " ".join(str(f) for f in args.levels)
    if args.loss:
        out["loss"] = args.loss
    out["device"] = args.device
    out["backend"] = args.backend
    out["edge_um"] = float(args.edge or 0.0)
    if args.lr is not None:
        out["step"] = float(args.lr)
    if args.lambda_smooth is not None:
        out["smoothness"] = float(args.lambda_smooth)
    model = args.psf[0]
    label = {v: k for k, v in PSF_MODELS.items() if v is not None}.get(model)
    if label is not None:
        out["psf"] = label
    if args.sigma:
        sig = list(args.sigma) * 3 if len(args.sigma) == 1 else list(args.sigma)
        out["sigma_one_voxel"], out["sigma_um"] = False, [float(v) for v in sig[:3]]
    optics = {"na": args.na, "wavelength_um": args.wavelength, "n_immersion": args.ni}
    optics = {k: float(v) for k, v in optics.items() if v is not None}
    gl = dict(optics, **{k: float(v) for k, v in (("n_sample", args.ns), ("depth_um", args.depth)) if v is not None})
    out["gibson_lanni"] = {**out.get("gibson_lanni", {}), **gl}
    out["hanser"] = {**out.get("hanser", {}), **optics}
    if args.zernike:
        out["zernike"] = " ".join(args.zernike)
    return out
