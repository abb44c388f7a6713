"""Transformers' own `ImageProcessingTestMixin` (from the installed version's sdist, see tests/upstream/fetch.py) run
against `TerraMindImageProcessor`, as a bare-image processor: `default_modality="RGB"`, 3-channel images."""

from __future__ import annotations

import unittest

from upstream import fetch

from terramind import TerraMindConfig, TerraMindImageProcessor
from terramind.processing_terramind import register_processors

common = fetch.require_upstream("test_image_processing_common")


class TerraMindImageProcessingTester(common.ImageProcessingTester):
    """Upstream's tester with TerraMind's bare-image settings (small batches of small images keep it fast)."""

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("default_modality", "RGB")
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("size", {"height": 32, "width": 32})
        super().__init__(parent, batch_size=3, min_resolution=20, max_resolution=48, **kwargs)

    def _get_image_processing_classes(self) -> dict[str, type]:
        # Upstream looks the classes up by the test folder's name (the model type) in the built-in mapping; TerraMind
        # registers its own (`register_processors`). One class under several backend names is one backend.
        from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

        register_processors()
        registered = IMAGE_PROCESSOR_MAPPING[TerraMindConfig]
        classes = registered if isinstance(registered, dict) else {"torchvision": registered}
        unique = {}
        for backend, image_processing_class in classes.items():
            if image_processing_class is not None and image_processing_class not in unique.values():
                unique[backend] = image_processing_class
        assert list(unique.values()) == [TerraMindImageProcessor], unique
        return unique


class TerraMindImageProcessingTest(common.ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = TerraMindImageProcessingTester
    test_cast_dtype = True
