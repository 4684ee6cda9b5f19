"""cryorecon in napari: an npe2 plugin (``napari.yaml``) and ``cryorecon view``.

The plugin reads ``.mrc``/``.map``/``.mrcs`` (also ``.gz``/``.bz2``) at their true
scale and RELION ``.star`` particle files with their metadata, writes image layers to
MRC, offers the bundled sample data, and has two dock widgets: one runs an ab initio
reconstruction and shows the map as it improves, one shows a finished run folder.

Only :mod:`._widgets` and :mod:`.viewer` import napari or Qt. Everything else here
(layer data, the reconstruction job, the run folder) is plain cryorecon that works, and
is tested, without napari; the widgets are faces over it. Install with
``pip install 'cryorecon[viz]'``.
"""

INSTALL_HINT = "napari is not installed: pip install 'cryorecon[viz]' (napari, npe2 and a Qt binding)"

__all__ = ["INSTALL_HINT"]
