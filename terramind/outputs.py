"""Moved to `terramind.scenes.outputs`; this old import path stays an alias of it (the same module object)."""

import sys

from .scenes import outputs as _moved

sys.modules[__name__] = _moved
