"""Transformers' own common tests, from the source distribution of the INSTALLED transformers version.

Upstream model tests are mixins (`ModelTesterMixin`, `BackboneTesterMixin`, `ConfigTester`,
`ImageProcessingTestMixin`, ...) that live in the repository's `tests/` folder, which the wheel does not ship. The
sdist on PyPI does: `pip download` fetches it once, its `tests/` folder is cached under
`~/.cache/terramind/transformers-tests/<version>/transformers_tests/` (`$TERRAMIND_CACHE` overrides the root) and
imported as the package `transformers_tests`, so that their relative imports (`from .test_configuration_common
import ...`) resolve. The few modules they import that the sdist leaves out get the stand-ins of `standins.py`.

`require_upstream("test_modeling_common")` in a test module returns the module, or skips the whole test module
with the reason when the package registry cannot be reached; any other failure is an error.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

PACKAGE = "transformers_tests"
# pip's words for "could not talk to the index" (offline, DNS, proxy, TLS): only then are the tests skipped.
_UNREACHABLE = ("NewConnectionError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "Max retries exceeded",
                "Temporary failure in name resolution", "Name or service not known", "Network is unreachable",
                "ProxyError", "SSLError", "timed out")  # fmt: skip


# Markers that Transformers' common tests put on their tests (registered as upstream's conftest does).
UPSTREAM_MARKERS = ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
                    "torch_compile_test", "torch_export_test", "generate", "is_pipeline_test", "is_staging_test")  # fmt: skip


def register_markers(config) -> None:
    """For tests/conftest.py's `pytest_configure`: no unknown-marker warnings from the upstream tests."""
    for marker in UPSTREAM_MARKERS:
        config.addinivalue_line("markers", f"{marker}: a marker of Transformers' common tests")


class UpstreamTestsUnavailable(RuntimeError):
    """The sdist cannot be downloaded because the package registry cannot be reached (the tests are skipped)."""


def cache_root() -> Path:
    """The project's cache (`$TERRAMIND_CACHE`, else ~/.cache/terramind, as the converted checkpoints)."""
    base = os.environ.get("TERRAMIND_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "terramind")
    return Path(base) / "transformers-tests"


def installed_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def upstream_tests_dir(version: str | None = None) -> Path:
    """The folder holding the package `transformers_tests` (the sdist's `tests/`) of `version` (default: installed),
    downloaded and extracted on first use."""
    version = version or installed_version()
    home = cache_root() / version
    if (home / PACKAGE / "test_modeling_common.py").is_file():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent, prefix=f".{version}-") as tmp:
        sdist = _download_sdist(version, Path(tmp))
        staging = Path(tmp) / "staging"
        _extract_tests(sdist, staging / PACKAGE)
        if not home.exists():  # another process may have finished first; its copy is the same
            try:
                staging.rename(home)  # atomic: a half-extracted cache is never seen
            except OSError:
                if not (home / PACKAGE / "test_modeling_common.py").is_file():
                    raise
    return home


def _download_sdist(version: str, into: Path) -> Path:
    if any(tag in version for tag in ("dev", "+")):
        raise UpstreamTestsUnavailable(f"transformers {version} is not a release: PyPI has no sdist of it.")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--retries", "1",
               "--timeout", "20", "--disable-pip-version-check", "-d", str(into), f"transformers=={version}"]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as error:
        raise UpstreamTestsUnavailable(f"pip download of transformers=={version} timed out") from error
    sdists = sorted(into.glob("transformers-*.tar.gz"))
    if done.returncode == 0 and sdists:
        return sdists[0]
    output = done.stdout + done.stderr
    tail = " | ".join(line for line in output.strip().splitlines()[-3:])
    if any(marker in output for marker in _UNREACHABLE):
        raise UpstreamTestsUnavailable(f"the package registry cannot be reached ({tail})")
    raise RuntimeError(f"pip download of the transformers=={version} sdist failed: {tail}")


def _extract_tests(sdist: Path, target: Path) -> None:
    """The sdist's top-level `tests/` folder (its Python files, any depth) as `target`, a package."""
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if len(parts) > 2 and parts[1] == "tests" and member.isfile():
                member.name = str(Path(*parts[2:]))
                members.append(member)
        if not any(m.name == "test_modeling_common.py" for m in members):
            raise RuntimeError(f"{sdist.name} has no tests/test_modeling_common.py")
        target.mkdir(parents=True)
        archive.extractall(target, members=members, filter="data")
    for folder in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch(exist_ok=True)


def import_upstream(module: str, version: str | None = None) -> ModuleType:
    """`transformers_tests.<module>` (e.g. "test_modeling_common", "test_image_processing_common"), importable
    with its relative imports; raises `UpstreamTestsUnavailable` when the registry cannot be reached."""
    home = upstream_tests_dir(version)
    if str(home) not in sys.path:
        sys.path.insert(0, str(home))
    from .standins import install_standins

    install_standins(home / PACKAGE, PACKAGE)
    return importlib.import_module(f"{PACKAGE}.{module}")


def require_upstream(module: str) -> ModuleType:
    """`import_upstream` for a test module: skips the calling test module, with the reason, when the package
    registry cannot be reached."""
    import pytest

    try:
        return import_upstream(module)
    except UpstreamTestsUnavailable as reason:
        pytest.skip(f"Transformers' common tests not available: {reason}", allow_module_level=True)


def clear_cache(version: str | None = None) -> None:
    """Remove the cached tests of `version` (default: installed)."""
    shutil.rmtree(cache_root() / (version or installed_version()), ignore_errors=True)
