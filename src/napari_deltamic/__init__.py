"""napari-deltamic: the napari plugin of deltaMic (readers, writer, sample data, fit widget).

Contributions are declared in ``napari.yaml`` (npe2) and imported lazily by napari; this
package holds no computation: meshes, PSFs, rendering and fitting come from ``deltamic_core``.
"""

from deltamic_core import __version__

__all__ = ["__version__"]
