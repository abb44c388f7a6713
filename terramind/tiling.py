"""Moved to `terramind.scenes.tiling`; this old import path stays an alias of it (the same module object)."""

import sys

from .scenes import tiling as _moved

sys.modules[__name__] = _moved
