"""TerraMind (IBM/ESA) as a Hugging Face Transformers model.

`import terramind` is cheap: the classes below, and torch, Transformers and rasterio with them, load on first use
(`from terramind import TerraMindModel`), which also makes Transformers' Auto classes know TerraMind. Code that
only calls Auto classes registers them with `terramind.register_auto_classes()`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it (relative to this package, or absolute)
_EXPORTS = {
    "AutoImageProcessor": "transformers",
    "AutoProcessor": "transformers",
    "MODALITIES": ".modalities",
    "NODATA_MASK_SUFFIX": ".image_processing_terramind",
    "TERRAMIND_VARIANTS": ".configuration_terramind",
    "TerraMindBackbone": ".modeling_terramind_tasks",
    "TerraMindConfig": ".configuration_terramind",
    "TerraMindCoordsTokenizer": ".tokenization_terramind_coords",
    "TerraMindForImageClassification": ".modeling_terramind_tasks",
    "TerraMindForPixelRegression": ".modeling_terramind_tasks",
    "TerraMindForSemanticSegmentation": ".modeling_terramind_tasks",
    "TerraMindForGeneration": ".modeling_terramind",
    "TerraMindImageProcessor": ".image_processing_terramind",
    "TerraMindModel": ".modeling_terramind",
    "TerraMindModelOutput": ".modeling_terramind",
    "TerraMindPixelRegressionOutput": ".modeling_terramind_tasks",
    "TerraMindPreTrainedModel": ".modeling_terramind",
    "TerraMindProcessor": ".processing_terramind",
    "TerraMindTokenizerConfig": ".configuration_terramind_tokenizer",
    "TerraMindTokenizerModel": ".modeling_terramind_tokenizer",
    "nodata_mask_key": ".image_processing_terramind",
    "read_geotiff": ".geotiff",
    "read_sample": ".geotiff",
    "resolve_modality": ".modalities",
    "write_geotiff": ".geotiff",
}
__all__ = [
    "AutoImageProcessor",
    "AutoProcessor",
    "MODALITIES",
    "NODATA_MASK_SUFFIX",
    "TERRAMIND_VARIANTS",
    "TerraMindBackbone",
    "TerraMindConfig",
    "TerraMindCoordsTokenizer",
    "TerraMindForGeneration",
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
    "read_geotiff",
    "read_sample",
    "resolve_modality",
    "write_geotiff",
    "register_auto_classes",
]

if TYPE_CHECKING:
    from transformers import AutoImageProcessor, AutoProcessor

    from .configuration_terramind import TERRAMIND_VARIANTS, TerraMindConfig
    from .configuration_terramind_tokenizer import TerraMindTokenizerConfig
    from .geotiff import read_geotiff, read_sample, write_geotiff
    from .image_processing_terramind import NODATA_MASK_SUFFIX, TerraMindImageProcessor, nodata_mask_key
    from .modalities import MODALITIES, resolve_modality
    from .modeling_terramind import (
        TerraMindForGeneration,
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
    from .tokenization_terramind_coords import TerraMindCoordsTokenizer

_registered = False


def register_auto_classes() -> None:
    """Make AutoConfig, AutoModel, AutoBackbone, AutoModelFor{SemanticSegmentation,ImageClassification},
    AutoTokenizer, AutoImageProcessor and AutoProcessor load TerraMind folders, and let `save_pretrained` write
    `auto_map` and the code files, so that saved folders also load with `trust_remote_code=True` where this package
    is not installed. Runs once; done on first use of any class of the package."""
    global _registered
    if _registered:
        return
    from transformers import (
        AutoBackbone,
        AutoConfig,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForSemanticSegmentation,
        AutoTokenizer,
    )

    from .configuration_terramind import TerraMindConfig
    from .configuration_terramind_tokenizer import TerraMindTokenizerConfig
    from .image_processing_terramind import TerraMindImageProcessor
    from .modeling_terramind import TerraMindModel
    from .modeling_terramind_tasks import (
        TerraMindBackbone,
        TerraMindForImageClassification,
        TerraMindForSemanticSegmentation,
    )
    from .modeling_terramind_tokenizer import TerraMindTokenizerModel
    from .processing_terramind import TerraMindProcessor, register_processors
    from .tokenization_terramind_coords import TerraMindCoordsTokenizer

    AutoConfig.register("terramind", TerraMindConfig, exist_ok=True)
    AutoModel.register(TerraMindConfig, TerraMindModel, exist_ok=True)
    AutoBackbone.register(TerraMindConfig, TerraMindBackbone, exist_ok=True)
    AutoModelForSemanticSegmentation.register(TerraMindConfig, TerraMindForSemanticSegmentation, exist_ok=True)
    AutoModelForImageClassification.register(TerraMindConfig, TerraMindForImageClassification, exist_ok=True)
    AutoConfig.register("terramind_tokenizer", TerraMindTokenizerConfig, exist_ok=True)
    AutoModel.register(TerraMindTokenizerConfig, TerraMindTokenizerModel, exist_ok=True)
    AutoTokenizer.register(TerraMindConfig, fast_tokenizer_class=TerraMindCoordsTokenizer, exist_ok=True)
    register_processors()
    TerraMindConfig.register_for_auto_class()
    TerraMindModel.register_for_auto_class("AutoModel")
    TerraMindTokenizerConfig.register_for_auto_class()
    TerraMindTokenizerModel.register_for_auto_class("AutoModel")
    TerraMindImageProcessor.register_for_auto_class("AutoImageProcessor")
    TerraMindProcessor.register_for_auto_class("AutoProcessor")
    TerraMindBackbone.register_for_auto_class("AutoBackbone")
    TerraMindForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    TerraMindForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    _registered = True


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
