"""Moved to `terramind.scenes.geotiff`; this old import path stays an alias of it (the same module object)."""

import sys

from .scenes import geotiff as _moved

sys.modules[__name__] = _moved
