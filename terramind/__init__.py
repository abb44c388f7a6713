"""TerraMind (IBM/ESA) as a Hugging Face Transformers model."""

from transformers import AutoConfig, AutoModel

from .configuration_terramind import TERRAMIND_VARIANTS, TerraMindConfig
from .modalities import MODALITIES, resolve_modality
from .modeling_terramind import TerraMindForGeneration, TerraMindModel, TerraMindModelOutput, TerraMindPreTrainedModel

AutoConfig.register("terramind", TerraMindConfig, exist_ok=True)
AutoModel.register(TerraMindConfig, TerraMindModel, exist_ok=True)
# save_pretrained writes `auto_map` and the code files, so saved folders also load with trust_remote_code=True
# where this package is not installed.
TerraMindConfig.register_for_auto_class()
TerraMindModel.register_for_auto_class("AutoModel")

__all__ = [
    "MODALITIES",
    "TERRAMIND_VARIANTS",
    "TerraMindConfig",
    "TerraMindForGeneration",
    "TerraMindModel",
    "TerraMindModelOutput",
    "TerraMindPreTrainedModel",
    "resolve_modality",
]
