"""The scene engine that embed, predict and generate share: finding and pairing scene files, reading windows,
tiling and batching, blending tile outputs, and writing outputs (GeoTIFF/COG, GeoParquet, atomic writes, manifests
and resume, quick-looks).

`terramind.scenes` was the module now in `terramind.scenes.discovery`; its names load from there on first use (so
that importing the engine, `terramind.scenes.engine`, does not import torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_DISCOVERY_NAMES = ("MAX_LISTED", "Scene", "find_scenes", "shard")


def __getattr__(name: str) -> Any:
    if name in _DISCOVERY_NAMES:
        return getattr(importlib.import_module(".discovery", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_DISCOVERY_NAMES)
