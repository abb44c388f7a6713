"""Where a `from_pretrained` name points: a local path, or a Hub repo id.

A name that looks like a path and is missing fails at once ("no such folder") instead of becoming a Hub id. A Hub
id is tried once: when the Hub cannot be reached, the process goes offline (as with `HF_HUB_OFFLINE=1`) and loads
from the local cache, instead of every file request retrying with back-off (about 25 s each).
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)
_PROBED: dict[str, bool] = {}


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
    """One request, without retries, to the Hub endpoint (once per process and endpoint). When it fails, the process
    goes offline, so that later loads look in the local cache once instead of retrying every file."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    endpoint = constants.ENDPOINT
    if endpoint not in _PROBED:
        from huggingface_hub.utils import get_session

        try:
            get_session().head(endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT)
            _PROBED[endpoint] = True
        except Exception as error:  # noqa: BLE001 - any transport error (DNS, refused, timeout) means unreachable
            _PROBED[endpoint] = False
            constants.HF_HUB_OFFLINE = True
            logger.warning(f"The Hugging Face Hub ({endpoint}) cannot be reached ({type(error).__name__}); working "
                           "offline (as with HF_HUB_OFFLINE=1), from the local cache.")  # fmt: skip
    return _PROBED[endpoint]


def resolve_source(name: str | os.PathLike, local_files_only: bool = False, what: str = "folder") -> str:
    """The name to load: an existing local path (`~` expanded), or a Hub id after checking once that the Hub can be
    reached (see `hub_reachable`); FileNotFoundError for a missing path."""
    local = local_source(name, what)
    if local is not None:
        return local
    if not local_files_only:
        hub_reachable()
    return str(name)


__all__ = ["hub_reachable", "local_source", "looks_like_path", "resolve_source"]
