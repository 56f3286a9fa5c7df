"""cbirlib: content-based retrieval of 3D medical images.

Every axial slice of a CT or MR volume is embedded by a pretrained 2D model, slice
embeddings go into an HNSW index, and retrieval chains compose slice search, volume
aggregation, late-interaction re-ranking and localization.

``import cbirlib`` is cheap: the public names (listed once, in ``cbirlib/__init__.pyi``)
are loaded on first use, and no torch import or plugin loading happens at import time.

Examples
--------
>>> import cbirlib
>>> cbirlib.Volume.__name__
'Volume'
"""

from __future__ import annotations

import lazy_loader

from cbirlib._version import __version__ as __version__

# every public name is written once, in __init__.pyi: type checkers read the stub, and
# these three are built from it (the names load on first use)
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
