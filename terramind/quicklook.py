"""Moved to `terramind.scenes.quicklook`; this old import path stays an alias of it (the same module object)."""

import sys

from .scenes import quicklook as _moved

sys.modules[__name__] = _moved
