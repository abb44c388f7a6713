"""Moved to `terramind.scenes.geoparquet`; this old import path stays an alias of it (the same module object)."""

import sys

from .scenes import geoparquet as _moved

sys.modules[__name__] = _moved
