"""Helpers for the napari GUI tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations


def click(qtbot, button) -> None:
    """A left click on ``button``, as the user does it (it must be enabled)."""
    from qtpy.QtCore import Qt

    assert button.isEnabled(), f"the {button.text()!r} button is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)
