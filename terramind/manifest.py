"""Moved to `terramind.scenes.manifest`; this old import path stays an alias of it (the same module object)."""

import sys

from .scenes import manifest as _moved

sys.modules[__name__] = _moved
