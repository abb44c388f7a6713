"""Moved to `terramind.scenes.prediction`; this old import path stays an alias of it (the same module object)."""

import sys

from .scenes import prediction as _moved

sys.modules[__name__] = _moved
