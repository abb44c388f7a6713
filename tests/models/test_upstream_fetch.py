"""The helper that brings Transformers' own common tests into the suite (tests/upstream/fetch.py)."""

from __future__ import annotations

import sys

import pytest
from upstream import fetch


def test_cached_sdist_tests_import_with_their_relative_imports():
    modeling = fetch.require_upstream("test_modeling_common")
    configuration = fetch.require_upstream("test_configuration_common")
    backbone = fetch.require_upstream("test_backbone_common")
    images = fetch.require_upstream("test_image_processing_common")
    processing = fetch.require_upstream("test_processing_common")
    assert modeling.__name__ == "transformers_tests.test_modeling_common"
    assert issubclass(
        modeling.ModelTesterMixin, sys.modules["transformers_tests.exporters.test_export"].ExportTesterMixin
    )
    assert hasattr(configuration, "ConfigTester") and hasattr(backbone, "BackboneTesterMixin")
    assert hasattr(images, "ImageProcessingTestMixin") and hasattr(processing, "ProcessorTesterMixin")
    home = fetch.upstream_tests_dir()
    assert home == fetch.cache_root() / fetch.installed_version()
    assert (home / fetch.PACKAGE / "test_modeling_common.py").is_file()


def test_unreachable_registry_is_reported_as_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("TERRAMIND_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("PIP_NO_INDEX", "0")
    with pytest.raises(fetch.UpstreamTestsUnavailable, match="registry cannot be reached"):
        fetch.upstream_tests_dir("5.0.0")
    assert not (tmp_path / "transformers-tests" / "5.0.0").exists()  # nothing half-written


def test_a_development_version_has_no_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("TERRAMIND_CACHE", str(tmp_path))
    with pytest.raises(fetch.UpstreamTestsUnavailable, match="not a release"):
        fetch.upstream_tests_dir("5.99.0.dev0")
