"""TerraMindConfig: typed task settings, validation where a user writes a setting, and configs that carry anything
(saved by earlier versions, touched by Trainer or PEFT) still load and build every model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModel
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from terramind import (
    TerraMindBackbone,
    TerraMindConfig,
    TerraMindForImageClassification,
    TerraMindForPixelRegression,
    TerraMindForSemanticSegmentation,
    TerraMindModel,
)
from terramind.configuration_terramind import TASK_SETTINGS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EARLIER_SEGMENTATION = FIXTURES / "config_segmentation_earlier_version.json"
TASK_MODELS = (TerraMindBackbone, TerraMindForImageClassification, TerraMindForSemanticSegmentation,
               TerraMindForPixelRegression)  # fmt: skip


def tiny(**kwargs) -> TerraMindConfig:
    params = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, num_decoder_layers=1, gated_mlp=False,
                  hidden_act="gelu", modalities=["S2L2A"], image_size=64, decoder_hidden_size=8)  # fmt: skip
    return TerraMindConfig(**{**params, **kwargs})


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("terramind")
    torch.manual_seed(0)
    TerraMindModel(tiny()).save_pretrained(folder)
    return folder


def test_task_settings_are_typed_fields_with_defaults_and_round_trip(tmp_path):
    defaults = TerraMindConfig()
    assert (defaults.decode_head, defaults.pool_scales, defaults.unet_channels) == ("upernet", [1, 2, 3, 6],
                                                                                    [512, 256, 128, 64])  # fmt: skip
    assert defaults.changed_task_settings() == {}
    for name in TASK_SETTINGS:
        assert name in TerraMindConfig.__dataclass_fields__, name
    config = tiny(decode_head="fcn", fcn_num_convs=1, loss={"ce": 0.5, "dice": 0.5}, temporal_merge="concat",
                  num_timesteps=2, class_weights=[1.0, 2.0], num_labels=2)  # fmt: skip
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["decode_head"] == "fcn"
    again = TerraMindConfig.from_pretrained(tmp_path)
    assert again.changed_task_settings() == config.changed_task_settings()
    assert again.changed_task_settings()["loss"] == {"ce": 0.5, "dice": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(loss="dcie"), r"loss must be one of ce, dice, focal, lovasz, jaccard \(segmentation\), mse, mae, l1, "
                            r"rmse, huber \(regression\).*got 'dcie' \(did you mean 'dice'\?\)"),
        (dict(loss={"ce": 0.5, "dcie": 0.5}), r"got 'dcie' \(did you mean 'dice'\?\)"),
        (dict(decode_head="upernett"), r"decode_head must be one of upernet, unet, fcn; got 'upernett' \(did you mean "
                                       r"'upernet'\?\)"),
        (dict(temporal_merge="avg"), r"temporal_merge must be one of mean, max, concat, diff; got 'avg'"),
        (dict(num_timesteps=0), r"num_timesteps must be a positive int"),
        (dict(pool_scales=[]), r"pool_scales and unet_channels must be non-empty"),
    ],
)  # fmt: skip
def test_an_invalid_value_lists_the_valid_ones(kwargs, message):
    with pytest.raises(StrictDataclassError, match=message):
        tiny(**kwargs)


def test_an_unknown_keyword_names_the_nearest_known_setting(saved_model):
    with pytest.raises(TypeError, match=r"TerraMindConfig got unknown settings: 'decode_haed' \(did you mean "
                                        r"'decode_head'\?\)"):  # fmt: skip
        TerraMindConfig(decode_haed="unet")
    with pytest.raises(TypeError, match=r"'num_hiden_layers' \(did you mean 'num_hidden_layers'\?\)"):
        TerraMindConfig.from_variant("tiny", num_hiden_layers=2)  # the command line's --config_overrides
    with pytest.raises(TypeError, match=r"'pool_scale' \(did you mean 'pool_scales'\?\)"):
        TerraMindConfig.from_pretrained(saved_model, pool_scale=[1, 2])
    with pytest.raises(TypeError, match=r"'pool_scale' \(did you mean 'pool_scales'\?\)"):
        AutoConfig.from_pretrained(saved_model, pool_scale=[1, 2])
    with pytest.raises(TypeError, match=r"TerraMindModel got unknown settings: 'merge_methd' \(did you mean "
                                        r"'merge_method'\?\)"):  # fmt: skip
        TerraMindModel.from_pretrained(saved_model, merge_methd="max")
    with pytest.raises(TypeError, match=r"TerraMindForSemanticSegmentation got unknown settings: 'unet_chanels' "
                                        r"\(did you mean 'unet_channels'\?\)"):  # fmt: skip
        TerraMindForSemanticSegmentation.from_pretrained(saved_model, num_labels=3, unet_chanels=[8, 8])
    # known settings given to from_pretrained land in the config
    model = TerraMindForSemanticSegmentation.from_pretrained(saved_model, num_labels=3, decode_head="unet",
                                                             unet_channels=[8, 8])  # fmt: skip
    assert model.config.decode_head == "unet" and model.config.unet_channels == [8, 8]


@pytest.mark.parametrize("name", ["tim_temperature", "tim_decoding_steps", "tim_top_k", "tim_top_p"])
def test_tim_sampling_settings_say_where_they_moved_also_through_from_pretrained(name, saved_model):
    message = rf"{name} moved to the generation config: pass tim_generation_config=TerraMindGenerationConfig"
    with pytest.raises(ValueError, match=message):
        TerraMindConfig(**{name: 1})
    with pytest.raises(ValueError, match=message):
        TerraMindConfig.from_pretrained(saved_model, **{name: 1})
    for model_class in (TerraMindModel, TerraMindForImageClassification):
        with pytest.raises(ValueError, match=message):
            model_class.from_pretrained(saved_model, **{name: 1})


def test_a_config_saved_by_an_earlier_version_loads_and_builds_every_model(tmp_path):
    """Task settings stored as plain entries, plus entries that Trainer (`use_cache`) or other tools left."""
    shutil.copy(EARLIER_SEGMENTATION, tmp_path / "config.json")
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, TerraMindConfig)
    assert config.changed_task_settings() == {
        "decode_head": "unet", "unet_channels": [16, 16, 8, 8], "ignore_index": 255, "head_dropout": 0.1,
        "loss": {"ce": 0.5, "dice": 0.5}, "out_indices": [1, 2, 3, 4],
    }  # fmt: skip
    assert config.batch_norm_eps == 1e-5 and config.id2label[2] == "built"
    segmenter = TerraMindForSemanticSegmentation(config)
    assert segmenter.ignore_index == 255 and segmenter.decode_head.__class__.__name__ == "TerraMindUNetHead"
    for model_class in (TerraMindModel, TerraMindBackbone, TerraMindForImageClassification):
        model_class(config)
    with pytest.raises(ValueError, match="Unknown regression loss"):  # a segmentation loss is no regression loss
        TerraMindForPixelRegression(config)


def test_a_saved_tim_config_of_an_earlier_version_loads_with_a_warning(tmp_path):
    entries = json.loads(EARLIER_SEGMENTATION.read_text())
    (tmp_path / "config.json").write_text(json.dumps({**entries, "tim_temperature": 1.0, "tim_top_k": 5}))
    logger = logging.get_logger("terramind.configuration_terramind")
    with CaptureLogger(logger) as captured:
        config = TerraMindConfig.from_pretrained(tmp_path)
    assert "Ignoring tim_temperature, tim_top_k of this saved config" in captured.out
    assert not hasattr(config, "tim_temperature")


def test_a_config_touched_by_trainer_builds_a_second_model_and_reloads(tmp_path):
    config = tiny(num_labels=3, decode_head="unet", unet_channels=[8, 8, 8, 8], class_weights=[1.0, 1.0, 2.0])
    first = TerraMindForSemanticSegmentation(config)
    first.config.use_cache = False  # what Trainer does while training
    first.config.batch_norm_eps = 1e-3  # what Transformers' common tests set
    for model_class in (*TASK_MODELS, TerraMindModel):
        model_class(first.config)
    first.save_pretrained(tmp_path)
    again = TerraMindForSemanticSegmentation.from_pretrained(tmp_path)
    assert again.config.batch_norm_eps == 1e-3  # kept, as Transformers keeps what it does not know
    assert again.config.changed_task_settings() == config.changed_task_settings()
    assert AutoModel.from_pretrained(tmp_path).__class__ is TerraMindModel


def test_settings_of_other_heads_give_one_warning_and_no_error():
    shared = tiny(num_labels=3, loss="dice", out_indices=[1, 2], pool_scales=[1, 2])
    logger = logging.get_logger("terramind.modeling_terramind_tasks")
    logger.warning_once.cache_clear()
    with CaptureLogger(logger) as captured:
        for _ in range(2):
            TerraMindForImageClassification(shared)
    assert captured.out.count("\n") == 1, captured.out
    assert captured.out.startswith("TerraMindForImageClassification does not use ")
    for described in ("pool_scales=[1, 2] (used by TerraMindForSemanticSegmentation, TerraMindForPixelRegression "
                      "with decode_head='upernet')", "loss='dice' (used by TerraMindForSemanticSegmentation, "
                      "TerraMindForPixelRegression)", "out_indices=[1, 2] (used by TerraMindBackbone, "
                      "TerraMindForSemanticSegmentation, TerraMindForPixelRegression)"):  # fmt: skip
        assert described in captured.out
    with CaptureLogger(logger) as captured:
        TerraMindForSemanticSegmentation(shared)
    assert captured.out == ""  # it uses all of them
