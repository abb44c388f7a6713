"""Kept for compatibility: moved to `terramind.training.adapters` (ARCHITECTURE.md); the old name is that module."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("terramind.training.adapters")
