"""Transformers' own `ProcessorTesterMixin` (from the installed version's sdist, see tests/upstream/fetch.py) run
against `TerraMindProcessor`: the image processor (bare RGB images) plus the coordinates tokenizer.

The mixin binds its "text" modality to the `tokenizer` attribute and calls `processor(text=...)`; TerraMind's
tokenizer encodes coordinates, and the processor takes no text, so the tests that feed text are skipped, each with
that reason. Everything else (saving, loading, components, call conventions, chat templates' absence) runs."""

from __future__ import annotations

import unittest
from pathlib import Path

from upstream import fetch

from terramind import TerraMindCoordsTokenizer, TerraMindImageProcessor, TerraMindProcessor

common = fetch.require_upstream("test_processing_common")
FIXTURES = Path(__file__).parents[1] / "fixtures"
NO_TEXT = "TerraMindProcessor's tokenizer encodes coordinates, not text: the processor takes no `text` input"

# Tests of the mixin that call the processor with `text=` (parameterized ones by their generated names).
_TEXT_TESTS = (
    "test_flat_kwarg_applied_when_modality_dict_lacks_it",
    "test_kwargs_overrides_default_subprocessor_kwargs_0_images",
    "test_processor_with_multiple_inputs",
    "test_structured_kwargs_nested_from_dict_0_images",
    "test_subprocessor_defaults_preserved_by_kwargs_0_images",
    "test_unstructured_kwargs_0_images",
    "test_unstructured_kwargs_batched_0_images",
)


def _skipped(reason: str):
    def test(self):
        self.skipTest(reason)

    return test


class TerraMindProcessorTest(common.ProcessorTesterMixin, unittest.TestCase):
    processor_class = TerraMindProcessor

    @classmethod
    def setUpClass(cls):
        # Upstream's processors are not remote code: saving one registered for the Auto classes (as the package
        # does) writes `auto_map` onto the saved instance only, which the save/load comparisons would count.
        cls._auto_class = TerraMindProcessor._auto_class
        TerraMindProcessor._auto_class = None
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        TerraMindProcessor._auto_class = cls._auto_class
        super().tearDownClass()

    @classmethod
    def _setup_image_processor(cls) -> TerraMindImageProcessor:
        return TerraMindImageProcessor(default_modality="RGB", do_resize=True, size=32)

    @classmethod
    def _setup_tokenizer(cls) -> TerraMindCoordsTokenizer:
        return TerraMindCoordsTokenizer.from_vocabulary_file(FIXTURES / "coords_vocab.json")

    # The processor's inputs are whichever modalities a batch holds (bare images come back as `pixel_values`), so
    # the outputs of one call are a subset of `model_input_names`, not all of them.
    test_model_input_names = _skipped(
        "TerraMindProcessor returns the modalities it is given: a subset of model_input_names (and needs no text)"
    )


for _name in _TEXT_TESTS:
    assert hasattr(TerraMindProcessorTest, _name), _name  # the mixin still has the test this skips
    setattr(TerraMindProcessorTest, _name, _skipped(NO_TEXT))
