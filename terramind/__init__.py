"""TerraMind (IBM/ESA) as a Hugging Face Transformers model.

`import terramind` is cheap (`terramind --help` does not load torch): the classes below, and torch, Transformers
and rasterio with them, load on first use. Transformers' Auto classes know TerraMind as before: the registration
runs once Transformers' Auto machinery or one of this package's modules is loaded (post-import hooks).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import TYPE_CHECKING, Any

import wrapt

# public name -> module that defines it (relative to this package, or absolute)
_EXPORTS = {
    "AutoImageProcessor": "transformers",
    "AutoProcessor": "transformers",
    "MODALITIES": ".modalities",
    "NODATA_MASK_SUFFIX": ".image_processing_terramind",
    "TERRAMIND_VARIANTS": ".configuration_terramind",
    "TERRATORCH_OUT_INDICES": ".configuration_terramind",
    "TerraMindBackbone": ".modeling_terramind_tasks",
    "TerraMindConfig": ".configuration_terramind",
    "TerraMindCoordsTokenizer": ".tokenization_terramind_coords",
    "TerraMindForImageClassification": ".modeling_terramind_tasks",
    "TerraMindForPixelRegression": ".modeling_terramind_tasks",
    "TerraMindForSemanticSegmentation": ".modeling_terramind_tasks",
    "TerraMindForGeneration": ".modeling_terramind",
    "TerraMindGenerationConfig": ".generation_terramind",
    "TerraMindGenerationOutput": ".modeling_terramind",
    "TerraMindImageProcessor": ".image_processing_terramind",
    "TerraMindModel": ".modeling_terramind",
    "TerraMindModelOutput": ".modeling_terramind",
    "TerraMindPixelRegressionOutput": ".modeling_terramind_tasks",
    "TerraMindPreTrainedModel": ".modeling_terramind",
    "TerraMindProcessor": ".processing_terramind",
    "TerraMindTokenizerConfig": ".configuration_terramind_tokenizer",
    "TerraMindTokenizerModel": ".modeling_terramind_tokenizer",
    "nodata_mask_key": ".image_processing_terramind",
    "generate_tiled": ".scenes.tiled",
    "predict_tiled": ".scenes.tiled",
    "read_geotiff": ".scenes.geotiff",
    "read_sample": ".scenes.geotiff",
    "resolve_modality": ".modalities",
    "write_geotiff": ".scenes.geotiff",
}
__all__ = [
    "AutoImageProcessor",
    "AutoProcessor",
    "MODALITIES",
    "NODATA_MASK_SUFFIX",
    "TERRAMIND_VARIANTS",
    "TERRATORCH_OUT_INDICES",
    "TerraMindBackbone",
    "TerraMindConfig",
    "TerraMindCoordsTokenizer",
    "TerraMindForGeneration",
    "TerraMindGenerationConfig",
    "TerraMindGenerationOutput",
    "TerraMindForImageClassification",
    "TerraMindForPixelRegression",
    "TerraMindForSemanticSegmentation",
    "TerraMindImageProcessor",
    "TerraMindModel",
    "TerraMindModelOutput",
    "TerraMindPixelRegressionOutput",
    "TerraMindPreTrainedModel",
    "TerraMindProcessor",
    "TerraMindTokenizerConfig",
    "TerraMindTokenizerModel",
    "nodata_mask_key",
    "generate_tiled",
    "predict_tiled",
    "read_geotiff",
    "read_sample",
    "resolve_modality",
    "write_geotiff",
    "register_auto_classes",
]

if TYPE_CHECKING:
    from transformers import AutoImageProcessor, AutoProcessor

    from .configuration_terramind import TERRAMIND_VARIANTS, TERRATORCH_OUT_INDICES, TerraMindConfig
    from .configuration_terramind_tokenizer import TerraMindTokenizerConfig
    from .generation_terramind import TerraMindGenerationConfig
    from .image_processing_terramind import NODATA_MASK_SUFFIX, TerraMindImageProcessor, nodata_mask_key
    from .modalities import MODALITIES, resolve_modality
    from .modeling_terramind import (
        TerraMindForGeneration,
        TerraMindGenerationOutput,
        TerraMindModel,
        TerraMindModelOutput,
        TerraMindPreTrainedModel,
    )
    from .modeling_terramind_tasks import (
        TerraMindBackbone,
        TerraMindForImageClassification,
        TerraMindForPixelRegression,
        TerraMindForSemanticSegmentation,
        TerraMindPixelRegressionOutput,
    )
    from .modeling_terramind_tokenizer import TerraMindTokenizerModel
    from .processing_terramind import TerraMindProcessor
    from .scenes.geotiff import read_geotiff, read_sample, write_geotiff
    from .tokenization_terramind_coords import TerraMindCoordsTokenizer

_registered = False
_registering = False


def register_auto_classes() -> None:
    """Make AutoConfig, AutoModel, AutoBackbone, AutoModelFor{SemanticSegmentation,ImageClassification,ImageToImage},
    AutoTokenizer, AutoImageProcessor and AutoProcessor load TerraMind folders, and let `save_pretrained` write
    `auto_map` and the code files, so that saved folders also load with `trust_remote_code=True` where this package
    is not installed; hook the converters of original releases into `from_pretrained` (the model code, which saved
    folders carry, never imports them). Runs once, by itself (see `_register_when_ready`)."""
    global _registered, _registering
    if _registered or _registering:
        return
    _registering = True
    try:
        _register()
        _registered = True
    finally:
        _registering = False


def _register() -> None:
    from transformers import (
        AutoBackbone,
        AutoConfig,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForImageToImage,
        AutoModelForSemanticSegmentation,
        AutoTokenizer,
    )

    from .configuration_terramind import TerraMindConfig
    from .configuration_terramind_tokenizer import TerraMindTokenizerConfig
    from .conversion.checkpoint import resolve_original_release
    from .conversion.tokenizer import resolve_original_tokenizer_release
    from .image_processing_terramind import TerraMindImageProcessor
    from .modeling_terramind import TerraMindForGeneration, TerraMindModel, TerraMindPreTrainedModel
    from .modeling_terramind_tasks import (
        TerraMindBackbone,
        TerraMindForImageClassification,
        TerraMindForSemanticSegmentation,
    )
    from .modeling_terramind_tokenizer import TerraMindTokenizerModel
    from .processing_terramind import TerraMindProcessor, register_processors
    from .tokenization_terramind_coords import TerraMindCoordsTokenizer

    TerraMindPreTrainedModel.original_release_resolver = staticmethod(resolve_original_release)
    TerraMindTokenizerModel.original_release_resolver = staticmethod(resolve_original_tokenizer_release)
    AutoConfig.register("terramind", TerraMindConfig, exist_ok=True)
    AutoModel.register(TerraMindConfig, TerraMindModel, exist_ok=True)
    AutoBackbone.register(TerraMindConfig, TerraMindBackbone, exist_ok=True)
    AutoModelForSemanticSegmentation.register(TerraMindConfig, TerraMindForSemanticSegmentation, exist_ok=True)
    AutoModelForImageClassification.register(TerraMindConfig, TerraMindForImageClassification, exist_ok=True)
    AutoModelForImageToImage.register(TerraMindConfig, TerraMindForGeneration, exist_ok=True)
    AutoConfig.register("terramind_tokenizer", TerraMindTokenizerConfig, exist_ok=True)
    AutoModel.register(TerraMindTokenizerConfig, TerraMindTokenizerModel, exist_ok=True)
    AutoTokenizer.register(TerraMindConfig, fast_tokenizer_class=TerraMindCoordsTokenizer, exist_ok=True)
    register_processors()
    TerraMindConfig.register_for_auto_class()
    TerraMindModel.register_for_auto_class("AutoModel")
    TerraMindForGeneration.register_for_auto_class("AutoModelForImageToImage")
    TerraMindTokenizerConfig.register_for_auto_class()
    TerraMindTokenizerModel.register_for_auto_class("AutoModel")
    TerraMindImageProcessor.register_for_auto_class("AutoImageProcessor")
    TerraMindProcessor.register_for_auto_class("AutoProcessor")
    TerraMindBackbone.register_for_auto_class("AutoBackbone")
    TerraMindForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    TerraMindForImageClassification.register_for_auto_class("AutoModelForImageClassification")


# Registration needs the classes, which need torch and Transformers (seconds to import), so it waits until those
# are loaded anyway: when Transformers' Auto machinery (or a base module that loads it) has been imported, e.g. a
# user calling AutoModel after `import terramind`, or when a module of this package that defines a registered class
# has been imported. It never runs while a module of this package or of Transformers is half-imported (its names
# are not defined yet); the hook of that module, once complete, runs it.
_TRANSFORMERS_MODULES = tuple(f"transformers.models.auto.{name}" for name in ("configuration_auto", "modeling_auto",
                              "tokenization_auto", "image_processing_auto", "processing_auto")) + (
                              "transformers.modeling_utils", "transformers.image_processing_utils",
                              "transformers.processing_utils")  # fmt: skip
_CLASS_MODULES = tuple(f"{__name__}.{name}" for name in ("configuration_terramind", "configuration_terramind_tokenizer",
                       "modeling_terramind", "modeling_terramind_tasks", "modeling_terramind_tokenizer",
                       "image_processing_terramind", "processing_terramind", "tokenization_terramind_coords"))  # fmt: skip


def _half_imported(finished: str) -> bool:
    """Whether a module of this package or of Transformers, other than `finished`, its packages and this package's
    `__init__`, is being executed right now."""
    parts = finished.split(".")
    done = {".".join(parts[:i]) for i in range(1, len(parts) + 1)} | {__name__}  # this package may import its own
    for name, module in list(sys.modules.items()):
        if name not in done and name.split(".")[0] in (__name__, "transformers"):
            if getattr(getattr(module, "__spec__", None), "_initializing", False):
                return True
    return False


def _register_when_ready(module: Any) -> None:
    if _registered or _registering or _half_imported(module.__name__):
        return
    if module.__name__.startswith(f"{__name__}.") and not any(name in sys.modules for name in _CLASS_MODULES):
        return  # e.g. the command line alone, before it loads a model: nothing to register yet
    register_auto_classes()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


for _module in _TRANSFORMERS_MODULES:
    wrapt.register_post_import_hook(_register_when_ready, _module)
for _info in pkgutil.iter_modules(__path__):
    wrapt.register_post_import_hook(_register_when_ready, f"{__name__}.{_info.name}")
