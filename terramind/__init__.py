"""TerraMind (IBM/ESA) as a Hugging Face Transformers model."""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageToImage,
    AutoModelForSemanticSegmentation,
    AutoProcessor,
    AutoTokenizer,
)

from .configuration_terramind import TERRAMIND_VARIANTS, TERRATORCH_OUT_INDICES, TerraMindConfig
from .configuration_terramind_tokenizer import TerraMindTokenizerConfig
from .conversion import resolve_original_release
from .generation_terramind import TerraMindGenerationConfig
from .geotiff import read_geotiff, read_sample, write_geotiff
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
from .processing_terramind import TerraMindProcessor, register_processors
from .tokenization_terramind_coords import TerraMindCoordsTokenizer
from .tokenizer_conversion import resolve_original_tokenizer_release

# Original (terratorch) releases convert on the fly when loaded with the package; the model code itself, which
# saved folders carry as remote code, never imports the converters.
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
# save_pretrained writes `auto_map` and the code files, so saved folders also load with trust_remote_code=True
# where this package is not installed.
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
    "TerraMindForImageClassification",
    "TerraMindForPixelRegression",
    "TerraMindForSemanticSegmentation",
    "TerraMindForGeneration",
    "TerraMindGenerationConfig",
    "TerraMindGenerationOutput",
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
]
