"""Moved to `terramind.scenes.embedding`; this old import path stays an alias of it (the same module object)."""

import sys

from .scenes import embedding as _moved

sys.modules[__name__] = _moved
