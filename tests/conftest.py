"""Shared pytest fixtures.

Sections are owned by topic; add new fixtures to the matching section (or a new one).
"""

from __future__ import annotations

import pytest

# --------------------------------------------------------------------------------------------
# napari GUI fixtures (shown viewer under Xvfb): the plugin reached the way a user reaches it.
# Names start with ``gui_``. The viewer itself comes from napari's ``make_napari_viewer``.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gui_manifest():
    """The installed npe2 manifest of napari-deltamic (names come from here, not from the tests)."""
    pytest.importorskip("napari")
    from npe2 import PluginManifest

    return PluginManifest.from_distribution("napari-deltamic")


@pytest.fixture(autouse=True)
def gui_settings_dir(tmp_path_factory, monkeypatch):
    """The widget remembers its settings in a per-test directory, never the user's config dir."""
    monkeypatch.setenv("NAPARI_DELTAMIC_CONFIG_DIR", str(tmp_path_factory.mktemp("deltamic-config")))


@pytest.fixture
def gui_plugin_thread_guard(monkeypatch):
    """Make napari raise if the plugin sets an attribute of a napari object off the main thread."""
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")


@pytest.fixture
def gui_open_widget(gui_manifest, gui_plugin_thread_guard, qtbot):
    """``open(viewer)`` -> the deltaMic dock widget, opened as Plugins > deltaMic does it.

    napari's ``Window.add_plugin_dock_widget`` with the plugin name and the widget's display
    name from the manifest: napari builds the widget itself and hands it a public-only proxy
    of the viewer. The dock is shown and exposed before the widget is returned.
    """

    def open_widget(viewer):
        widget_name = gui_manifest.contributions.widgets[0].display_name
        dock, widget = viewer.window.add_plugin_dock_widget(gui_manifest.name, widget_name)
        qtbot.waitUntil(widget.isVisible, timeout=5000)
        return widget

    return open_widget


@pytest.fixture
def gui_menu_action(gui_manifest):
    """``find(menu, label)`` -> the QAction titled ``label`` in ``menu`` or any of its submenus.

    Menus are refreshed the way opening them does it (``aboutToShow``), so the actions napari
    builds from plugin manifests are present.
    """

    def find(menu, label: str):
        seen = []
        stack = [menu]
        while stack:
            m = stack.pop()
            m.aboutToShow.emit()
            for action in m.actions():
                seen.append(action.text())
                if action.text() == label:
                    return action
                if action.menu() is not None:
                    stack.append(action.menu())
        raise AssertionError(f"no menu item {label!r}; the menu has {seen}")

    return find


@pytest.fixture
def gui_errors(monkeypatch):
    """The error notifications the plugin shows, collected (instead of popping them up)."""
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(str(msg)))
    return shown


# --------------------------------------------------------------------------------------------
# the plugin's sample data (File > Open Sample): the synthetic embryo stack is rendered once per
# test session into one cache directory and reused by every test that opens it
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sample_cache_dir(tmp_path_factory):
    """The session's sample-data cache directory (NAPARI_DELTAMIC_CACHE of the sample tests)."""
    return tmp_path_factory.getbasetemp() / "deltamic-sample-cache"


@pytest.fixture(scope="session")
def embryo(sample_cache_dir):
    """The napari sample embryo (image and truth), rendered once per session into the session's
    sample cache."""
    from napari_deltamic import _sample_data

    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_DELTAMIC_CACHE", str(sample_cache_dir))
    try:
        yield _sample_data.synthetic_embryo()
    finally:
        mp.undo()


@pytest.fixture
def sample_cache(sample_cache_dir, monkeypatch):
    """NAPARI_DELTAMIC_CACHE set to the session's sample cache for this test; its path."""
    monkeypatch.setenv("NAPARI_DELTAMIC_CACHE", str(sample_cache_dir))
    return sample_cache_dir
