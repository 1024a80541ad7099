"""Start napari with the bundled sample opened and the deltaMic widget docked (`make napari`).

    python scripts/napari_demo.py [--quit-after SECONDS]

The sample (a synthetic 3-cell embryo with its ground-truth mesh and one seed per cell) comes
through napari's own sample menu entry, the widget through the Plugins menu's code path, as a
user would open them. ``--quit-after`` closes the window after that many seconds (the smoke
test uses it) and exits with status 0 only if the sample and the widget were both there.
"""

from __future__ import annotations

import argparse
import sys

PLUGIN = "napari-deltamic"
WIDGET = "deltaMic inverse rendering"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quit-after", type=float, default=None, metavar="SECONDS", help="close napari after this many seconds"
    )
    args = p.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari - deltaMic")
    viewer.open_sample(PLUGIN, "embryo")
    dock, _widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    layers = [layer.name for layer in viewer.layers]
    print(f"napari {napari.__version__}: sample layers {layers}; docked '{dock.name}'", flush=True)
    if args.quit_after is not None:
        QTimer.singleShot(int(args.quit_after * 1000), viewer.close)
    napari.run()
    return 0 if layers else 1


if __name__ == "__main__":
    sys.exit(main())
