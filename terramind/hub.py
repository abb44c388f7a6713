"""Where a `from_pretrained` name points: a local path, or a Hub repo id.

A name that looks like a path and is missing fails at once ("no such folder") instead of becoming a Hub id. A Hub
id is tried once: when the Hub cannot be reached, loading goes on from the local cache only, instead of every file
request retrying with back-off (about 25 s each).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_HUB_REACHABLE: dict[str, bool] = {}


def looks_like_path(name: str | os.PathLike) -> bool:
    """True for names that can only be paths: existing ones, `Path` objects, names starting with `.`, `~` or a
    separator, Windows separators, or more than the one `/` of an `owner/name` Hub id."""
    if isinstance(name, os.PathLike) or os.path.exists(name):
        return True
    name = str(name)
    return (name.startswith((".", "~", "/")) or os.path.isabs(name) or "\\" in name or name.count("/") > 1
            or name.endswith("/"))  # fmt: skip


def local_source(name: str | os.PathLike, what: str = "folder") -> str | None:
    """The expanded local path of a path-like `name` (FileNotFoundError if it is missing), else None (a Hub id)."""
    if not looks_like_path(name):
        return None
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such {what} (a local path; Hub repo ids look like 'owner/name').")
    return str(path)


def hub_reachable() -> bool:
    """One request, no retries, to the Hub endpoint (remembered for the process); False offline (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_REACHABLE:
        from huggingface_hub.utils import get_session

        try:
            get_session().head(endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT)
            _HUB_REACHABLE[endpoint] = True
        except Exception:  # noqa: BLE001 - any transport error (DNS, refused, timeout) means unreachable
            _HUB_REACHABLE[endpoint] = False
    return _HUB_REACHABLE[endpoint]


def resolve_source(name: str | os.PathLike, kwargs: dict[str, Any], what: str = "folder") -> str | os.PathLike:
    """The name to load: an existing local path (expanded), or a Hub id; when the Hub is unreachable, sets
    `local_files_only=True` in `kwargs` so that the load looks in the cache once instead of retrying."""
    local = local_source(name, what)
    if local is not None:
        return local
    if not kwargs.get("local_files_only") and not hub_reachable():
        kwargs["local_files_only"] = True
    return name


__all__ = ["hub_reachable", "local_source", "looks_like_path", "resolve_source"]
