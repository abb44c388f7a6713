"""Kept for compatibility: moved to `terramind.training.data_generation` (ARCHITECTURE.md); the old name is that module."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("terramind.training.data_generation")
