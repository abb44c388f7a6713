"""Task models: TerraMindBackbone, segmentation (UperNet/UNet/FCN), classification, pixel regression."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoBackbone, UperNetConfig, UperNetForSemanticSegmentation
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from terramind import TERRATORCH_OUT_INDICES, TerraMindConfig, TerraMindModel
from terramind.modeling_terramind_tasks import (
    TerraMindBackbone,
    TerraMindForImageClassification,
    TerraMindForPixelRegression,
    TerraMindForSemanticSegmentation,
    default_out_indices,
)

SMALL_HEADS = {"upernet": dict(decoder_hidden_size=16), "unet": dict(unet_channels=[32, 16, 16, 8]),
               "fcn": dict(decoder_hidden_size=16)}  # fmt: skip
SMALL_HEAD = SMALL_HEADS["upernet"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


def config(**kwargs) -> TerraMindConfig:
    params = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_decoder_layers=1, hidden_act="gelu",
                  gated_mlp=False, modalities=["S2L2A", "S1RTC"], num_labels=5)  # fmt: skip
    params.update(kwargs)
    return TerraMindConfig(**params)


def inputs(batch: int = 2, height: int = 64, width: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"S2L2A": torch.randn(batch, 12, height, width, generator=generator),
            "S1RTC": torch.randn(batch, 2, height, width, generator=generator)}  # fmt: skip


# ----------------------------------------------------------------------------- segmentation heads
@pytest.mark.parametrize("head", ["upernet", "unet", "fcn"])
@pytest.mark.parametrize("size", [(224, 224), (224, 160), (48, 96)])
def test_segmentation_logits_at_input_size(head, size):
    model = TerraMindForSemanticSegmentation(config(decode_head=head, **SMALL_HEADS[head]))
    labels = torch.randint(0, 5, (2, *size))
    output = model(**inputs(2, *size), labels=labels)
    assert output.logits.shape == (2, 5, *size)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert model.decode_head.classifier.weight.grad is not None


def test_segmentation_input_forms_agree():
    model = TerraMindForSemanticSegmentation(config(**SMALL_HEAD)).eval()
    x = inputs()
    with torch.no_grad():
        by_kwargs = model(**x).logits
        by_dict = model(x).logits
        by_tensor = TerraMindForSemanticSegmentation(config(modalities=["S2L2A"], **SMALL_HEAD)).eval()(x["S2L2A"])
    torch.testing.assert_close(by_kwargs, by_dict)
    assert by_tensor.logits.shape == (2, 5, 64, 64)
    with torch.no_grad():  # a subset of the configured modalities works (mean over the given ones)
        assert model(S2L2A=x["S2L2A"]).logits.shape == (2, 5, 64, 64)


def test_segmentation_loss_ignore_index_and_class_weights():
    model = TerraMindForSemanticSegmentation(config(ignore_index=255, **SMALL_HEAD)).eval()
    x = inputs()
    labels = torch.randint(0, 5, (2, 64, 64))
    labels[:, :32] = 255
    with torch.no_grad():
        output = model(**x, labels=labels)
        expected = F.cross_entropy(output.logits, labels, ignore_index=255)
        torch.testing.assert_close(output.loss, expected)
        # ignored pixels do not count: changing the logits there leaves the loss unchanged
        all_ignored = model(**x, labels=torch.full_like(labels, 255)).loss
    assert all_ignored == 0
    weights = [1.0, 2.0, 0.5, 1.0, 3.0]
    weighted = TerraMindForSemanticSegmentation(config(ignore_index=255, class_weights=weights, **SMALL_HEAD)).eval()
    weighted.load_state_dict(model.state_dict())
    with torch.no_grad():
        loss = weighted(**x, labels=labels).loss
    torch.testing.assert_close(loss, F.cross_entropy(output.logits, labels, weight=torch.tensor(weights),
                                                     ignore_index=255))  # fmt: skip


def test_segmentation_label_errors():
    model = TerraMindForSemanticSegmentation(config(**SMALL_HEAD))
    x = inputs()
    with pytest.raises(ValueError, match=r"labels must be \(B, H, W\)"):
        model(**x, labels=torch.zeros(2, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class ids \[7\] outside 0..4"):
        model(**x, labels=torch.full((2, 64, 64), 7))
    with pytest.raises(ValueError, match="integer class ids"):
        model(**x, labels=torch.full((2, 64, 64), 0.5))
    with pytest.raises(ValueError, match="num_labels >= 2"):
        TerraMindForSemanticSegmentation(config(num_labels=1))
    with pytest.raises(ValueError, match="class_weights has 2 values"):
        TerraMindForSemanticSegmentation(config(class_weights=[1.0, 2.0]))
    with pytest.raises(StrictDataclassError, match="decode_head must be one of upernet, unet, fcn; got 'segformer'"):
        config(decode_head="segformer")  # refused where it is written
    with pytest.raises(ValueError, match="merge_method 'mean', 'max' or 'concat'"):
        TerraMindForSemanticSegmentation(config(merge_method="dict"))
    # (B, 1, H, W) and float class ids are accepted
    assert torch.isfinite(model(**x, labels=torch.ones(2, 1, 64, 64)).loss)


def test_batch_of_one_trains():
    """UperNet's 1x1 pooling branch cannot use batch statistics of one value; it falls back to running ones."""
    model = TerraMindForSemanticSegmentation(config(**SMALL_HEAD)).train()
    loss = model(**inputs(1, 32, 32), labels=torch.randint(0, 5, (1, 32, 32))).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_freezing_and_gradient_checkpointing():
    model = TerraMindForSemanticSegmentation(config(freeze_backbone=True, **SMALL_HEAD))
    assert not any(p.requires_grad for p in model.terramind.parameters())
    assert all(p.requires_grad for p in model.decode_head.parameters())
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.terramind.parameters())
    model.activation_checkpointing_enable()
    model.train()
    model(**inputs(), labels=torch.randint(0, 5, (2, 64, 64))).loss.backward()
    assert model.terramind.encoder.layer[0].attention.qkv.weight.grad is not None


def test_save_load_and_task_settings_through_from_pretrained(tmp_path):
    base = TerraMindModel(config())
    base.save_pretrained(tmp_path / "base")
    model = TerraMindForSemanticSegmentation.from_pretrained(tmp_path / "base", num_labels=3, decode_head="unet",
                                                             freeze_backbone=True, **SMALL_HEADS["unet"])  # fmt: skip
    assert model.config.decode_head == "unet" and model.config.num_labels == 3
    assert not any(p.requires_grad for p in model.terramind.parameters())  # survives loading
    torch.testing.assert_close(model.terramind.encoder.layer[1].mlp.fc1.weight, base.encoder.layer[1].mlp.fc1.weight)
    model.save_pretrained(tmp_path / "seg")
    again = TerraMindForSemanticSegmentation.from_pretrained(tmp_path / "seg")
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs()).logits, model(**inputs()).logits)
    with pytest.raises(TypeError, match="decoder_width"):
        TerraMindForSemanticSegmentation.from_pretrained(tmp_path / "base", decoder_width=3)


def test_heads_load_converted_original_checkpoint(converted):
    """A converted release (generator weights and all) loads into the heads; the encoder equals TerraMindModel's."""
    model = TerraMindForSemanticSegmentation.from_pretrained(converted["tiny"], modalities=["S2L2A"], num_labels=3,
                                                             **SMALL_HEAD)  # fmt: skip
    encoder = TerraMindModel.from_pretrained(converted["tiny"], modalities=["S2L2A"])
    reference = encoder.state_dict()
    for name, value in model.terramind.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0)
    assert model(S2L2A=torch.randn(1, 12, 32, 48)).logits.shape == (1, 3, 32, 48)


def test_thinking_in_modalities_head_loads_its_generator(converted):
    """A TiM head from a converted release: the frozen generator gets the release's weights, the head is new."""
    from terramind import TerraMindForGeneration

    model = TerraMindForSemanticSegmentation.from_pretrained(converted["tiny"], modalities=["S2L2A"], num_labels=3,
                                                             tim_modalities=["LULC"], **SMALL_HEAD)  # fmt: skip
    generator = TerraMindForGeneration.from_pretrained(converted["tiny"]).state_dict()
    loaded = model.terramind.tim_generator.state_dict()
    assert loaded and set(loaded) <= set(generator)
    assert all(torch.equal(value, generator[name]) for name, value in loaded.items())
    assert not any(p.requires_grad for p in model.terramind.tim_generator.parameters())
    assert model(S2L2A=torch.randn(1, 12, 32, 32)).logits.shape == (1, 3, 32, 32)


def test_thinking_in_modalities_as_backbone():
    model = TerraMindForSemanticSegmentation(config(tim_modalities=["LULC"], merge_method="concat", **SMALL_HEAD))
    generator = model.terramind.tim_generator
    assert not any(p.requires_grad for p in generator.parameters())
    model.freeze_backbone(False)
    assert not any(p.requires_grad for p in generator.parameters())  # the TiM generator stays frozen
    assert model.feature_neck.out_channels[-1] == 32 * 3  # S2L2A, S1RTC and the generated LULC, concatenated
    output = model(**inputs(1, 32, 32), labels=torch.randint(0, 5, (1, 32, 32)))
    assert output.logits.shape == (1, 5, 32, 32)


# ----------------------------------------------------------------------------- backbone
def test_default_out_indices_match_terratorch_select_indices():
    # TerraTorch SelectIndices base [2, 5, 8, 11] / large [5, 11, 17, 23] -> hidden_states indices (+1)
    assert default_out_indices(12) == [3, 6, 9, 12]
    assert default_out_indices(24) == [6, 12, 18, 24]


def test_backbone_stages_are_hidden_states_with_normed_last():
    backbone = TerraMindBackbone(config(out_indices=[0, 2, 4])).eval()
    assert backbone.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert backbone.out_features == ["stem", "stage2", "stage4"]
    x = inputs(2, 64, 96)
    with torch.no_grad():
        maps = backbone(**x).feature_maps
        reference = backbone.terramind(**x, output_hidden_states=True)
    grid = (4, 6)
    assert [tuple(m.shape) for m in maps] == [(2, 32, *grid)] * 3
    expected = [reference.hidden_states[0], reference.hidden_states[2], reference.last_hidden_state]
    for feature_map, tokens in zip(maps, expected, strict=True):
        torch.testing.assert_close(feature_map, tokens.transpose(1, 2).reshape(2, 32, *grid))
    assert not torch.allclose(maps[-1].flatten(2).transpose(1, 2), reference.hidden_states[4])  # normed
    assert backbone.channels == [32, 32, 32]


def test_backbone_out_features_pyramid_concat_and_auto():
    backbone = TerraMindBackbone(config(out_features=["stage1", "stage2", "stage3", "stage4"], merge_method="concat",
                                        use_feature_pyramid=True))  # fmt: skip
    maps = backbone(inputs(1, 64, 32)).feature_maps
    assert backbone.out_indices == [1, 2, 3, 4]
    assert backbone.channels == [16, 32, 64, 64]  # concat of 2 modalities: 64 channels, then /4, /2
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 16, 8), (32, 8, 4), (64, 4, 2), (64, 2, 1)]
    AutoBackbone.register(TerraMindConfig, TerraMindBackbone, exist_ok=True)
    assert isinstance(AutoBackbone.from_config(config(out_indices=[-1])), TerraMindBackbone)
    with pytest.raises(ValueError, match="out_indices must be valid indices"):
        config(out_indices=[5])
    with pytest.raises(ValueError, match="exactly 4 stages"):
        TerraMindBackbone(config(out_indices=[1, 2], use_feature_pyramid=True))
    with pytest.raises(ValueError, match="should correspond to the same stages"):
        config(out_indices=[1], out_features=["stage2"])


def test_backbone_config_like_transformers_backbones():
    """out_indices / out_features stay in sync in the config; neither given: the last stage; the backbone never
    writes into the config it was given; TerraTorch's stages are a preset."""
    shared = config()
    assert (shared.out_indices, shared.out_features) == ([4], ["stage4"])
    assert shared.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    before = shared.to_dict()
    backbone = TerraMindBackbone(shared).eval()
    assert shared.to_dict() == before and before["out_indices"] is None  # nothing written back
    maps = backbone(inputs(1, 32, 32)).feature_maps
    assert len(maps) == 1 and backbone.out_features == ["stage4"]
    shared.out_indices = [2, 4]
    assert shared.out_features == ["stage2", "stage4"]
    shared.out_features = ["stem"]
    assert shared.out_indices == [0]
    preset = TerraMindConfig.from_variant("base", out_indices=TERRATORCH_OUT_INDICES["base"])
    assert preset.out_features == ["stage3", "stage6", "stage9", "stage12"]
    # the dense heads' own default when no stages are chosen: TerraTorch's four
    assert TerraMindForSemanticSegmentation(config(num_labels=3)).feature_neck.out_indices == [1, 2, 3, 4]


def test_backbone_in_transformers_upernet():
    """TerraMindBackbone plugs into transformers' UperNetForSemanticSegmentation through `backbone_config`."""
    AutoBackbone.register(TerraMindConfig, TerraMindBackbone, exist_ok=True)
    backbone_config = config(modalities=["S2L2A"], out_indices=[1, 2, 3, 4], use_feature_pyramid=True)
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone_config, hidden_size=16,
                                                         auxiliary_channels=8, num_labels=3))  # fmt: skip
    assert model(torch.randn(2, 12, 64, 64)).logits.shape == (2, 3, 64, 64)


# ----------------------------------------------------------------------------- classification, regression
def test_image_classification_losses():
    model = TerraMindForImageClassification(config(num_labels=4))
    output = model(**inputs(), labels=torch.tensor([0, 3]))
    assert output.logits.shape == (2, 4)
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, torch.tensor([0, 3])))
    multi = TerraMindForImageClassification(config(num_labels=4, problem_type="multi_label_classification"))
    assert torch.isfinite(multi(**inputs(), labels=torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])).loss)
    regression = TerraMindForImageClassification(config(num_labels=1))
    assert torch.isfinite(regression(**inputs(), labels=torch.tensor([0.5, 2.0])).loss)
    with pytest.raises(ValueError, match="out of range"):
        model(**inputs(), labels=torch.tensor([0, 4]))
    as_dict = TerraMindForImageClassification(config(num_labels=4, merge_method="dict"))
    assert as_dict(**inputs()).logits.shape == (2, 4)


def test_pixel_regression_ignores_nan_labels():
    model = TerraMindForPixelRegression(config(decode_head="fcn", **SMALL_HEAD)).eval()
    labels = torch.randn(2, 64, 64)
    labels[0, :10] = float("nan")
    with torch.no_grad():
        output = model(**inputs(), labels=labels)
    assert output.logits.shape == (2, 1, 64, 64)
    valid = torch.isfinite(labels)
    torch.testing.assert_close(output.loss, F.mse_loss(output.logits[:, 0][valid], labels[valid]))
    two = TerraMindForPixelRegression(config(num_regression_outputs=2, regression_loss="l1", **SMALL_HEAD))
    assert two(**inputs(), labels=torch.zeros(2, 2, 64, 64)).logits.shape == (2, 2, 64, 64)
    with pytest.raises(ValueError, match="labels must be"):
        two(**inputs(), labels=torch.zeros(2, 64, 64))


# ----------------------------------------------------------------------------- losses and head options
def test_segmentation_loss_option_and_all_ignored_batch():
    from terramind.losses import segmentation_loss

    model = TerraMindForSemanticSegmentation(config(loss={"ce": 0.5, "dice": 0.5}, **SMALL_HEAD)).eval()
    labels = torch.randint(0, 5, (2, 64, 64))
    output = model(**inputs(), labels=labels)
    torch.testing.assert_close(output.loss, segmentation_loss(output.logits, labels, {"ce": 0.5, "dice": 0.5}))
    model.train()
    ignored = model(**inputs(), labels=torch.full((2, 64, 64), -100)).loss
    ignored.backward()
    assert ignored.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    with pytest.raises(StrictDataclassError, match="loss must be one of ce, dice, focal, lovasz, jaccard"):
        config(loss="tversky", **SMALL_HEAD)


def test_regression_loss_option_and_all_nan_batch():
    model = TerraMindForPixelRegression(config(loss="rmse", **SMALL_HEAD)).eval()
    labels = torch.randn(2, 64, 64)
    output = model(**inputs(), labels=labels)
    torch.testing.assert_close(output.loss, F.mse_loss(output.logits[:, 0], labels).sqrt())
    assert model(**inputs(), labels=torch.full((2, 64, 64), float("nan"))).loss.item() == 0.0
    with pytest.raises(ValueError, match="disagree"):
        TerraMindForPixelRegression(config(loss="rmse", regression_loss="huber", **SMALL_HEAD))


def test_task_settings_are_checked_where_they_are_written():
    """A typo names the nearest known setting; a value that is not allowed lists the allowed ones."""
    with pytest.raises(TypeError, match=r"unknown settings: 'loss_fn' \(did you mean 'loss'\?\)"):
        config(loss_fn="dice")
    with pytest.raises(TypeError, match=r"'decode_haed' \(did you mean 'decode_head'\?\)"):
        TerraMindForSemanticSegmentation(config(), decode_haed="unet")  # a model's keyword arguments too
    for kwargs, message in [
        (dict(loss="dcie"), r"loss must be one of ce, dice, .* got 'dcie' \(did you mean 'dice'\?\)"),
        (dict(decode_head="upernett"), r"decode_head must be one of upernet, unet, fcn; got 'upernett'"),
        (dict(temporal_merge="avg"), r"temporal_merge must be one of mean, max, concat, diff; got 'avg'"),
        (dict(regression_loss="mean"), r"regression_loss must be one of mse, mae, l1, rmse, huber"),
        (dict(head_dropout=1.5), r"head_dropout must be in \[0, 1\)"),
    ]:  # fmt: skip
        with pytest.raises(StrictDataclassError, match=message):
            config(**kwargs)
    settings = config()
    settings.decode_head = "upernett"  # assigned later: checked when a model is built from it
    with pytest.raises(ValueError, match="decode_head must be one of upernet, unet, fcn; got 'upernett'"):
        TerraMindForSemanticSegmentation(settings)
    with pytest.raises(ValueError, match="Unknown segmentation loss"):  # a regression loss on a segmenter
        TerraMindForSemanticSegmentation(config(loss="mse", **SMALL_HEAD))


def test_settings_a_model_does_not_use_give_one_warning_naming_their_users():
    logger = logging.get_logger("terramind.modeling_terramind_tasks")
    logger.warning_once.cache_clear()
    with CaptureLogger(logger) as captured:
        TerraMindForImageClassification(config(loss="dice"))
        TerraMindForImageClassification(config(loss="dice"))
    assert captured.out.count("does not use") == 1, captured.out
    assert ("TerraMindForImageClassification does not use loss='dice' (used by TerraMindForSemanticSegmentation, "
            "TerraMindForPixelRegression)") in captured.out  # fmt: skip
    with CaptureLogger(logger) as captured:
        TerraMindForSemanticSegmentation(config(decode_head="upernet", unet_channels=[8, 8, 8, 8], **SMALL_HEAD))
        TerraMindBackbone(config(head_dropout=0.1, num_regression_outputs=2))
    assert ("does not use unet_channels=[8, 8, 8, 8] (used by TerraMindForSemanticSegmentation, "
            "TerraMindForPixelRegression with decode_head='unet')") in captured.out  # fmt: skip
    assert "TerraMindBackbone does not use " in captured.out and "head_dropout=0.1 (used by" in captured.out
    assert "num_regression_outputs=2 (used by TerraMindForPixelRegression)" in captured.out


def test_one_config_touched_by_trainer_and_peft_builds_every_model():
    """As Trainer (`use_cache`), tests (`batch_norm_eps`) and older versions leave attributes on a config, and one
    config holds the settings of every head: every class builds from it, again and again (full, then LoRA)."""
    from terramind.finetuning import apply_lora

    shared = config(decode_head="unet", unet_channels=[8, 8, 8, 8], out_indices=[1, 2, 3, 4], class_weights=[1.0] * 5)
    shared.use_cache = False
    shared.batch_norm_eps = 1e-3
    shared.gradient_checkpointing = True
    first = TerraMindForSemanticSegmentation(shared)
    lora = apply_lora(TerraMindForSemanticSegmentation(shared), target_modules=["qkv"])
    assert any("lora_" in name for name, p in lora.named_parameters() if p.requires_grad)
    for model_class in (TerraMindModel, TerraMindBackbone, TerraMindForImageClassification,
                        TerraMindForPixelRegression):  # fmt: skip
        model_class(shared)
    x = inputs(1, 32, 32)
    with torch.no_grad():
        assert first.eval()(**x).logits.shape == (1, 5, 32, 32)


@pytest.mark.parametrize("head", ["upernet", "unet", "fcn"])
def test_head_dropout_in_every_dense_head(head):
    plain = TerraMindForSemanticSegmentation(config(decode_head=head, **SMALL_HEADS[head])).eval()
    dropped = TerraMindForSemanticSegmentation(config(decode_head=head, head_dropout=0.5, **SMALL_HEADS[head]))
    assert dropped.decode_head.classifier.dropout.p == 0.5
    dropped.load_state_dict(plain.state_dict())  # the same weights and keys as without dropout
    x = inputs(1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval()(**x).logits, plain(**x).logits)
        dropped.train()
        torch.manual_seed(0)
        first = dropped(**x).logits
        second = dropped(**x).logits
    assert not torch.equal(first, second)


def test_head_dropout_in_classifier_and_regression():
    classifier = TerraMindForImageClassification(config(head_dropout=0.3))
    assert classifier.dropout.p == 0.3
    with pytest.raises(ValueError, match="disagree"):
        TerraMindForImageClassification(config(head_dropout=0.3, classifier_dropout=0.2))
    regression = TerraMindForPixelRegression(config(decode_head="fcn", head_dropout=0.2, **SMALL_HEAD))
    assert regression.decode_head.classifier.dropout.p == 0.2


# ----------------------------------------------------------------------------- multi-temporal inputs
def series(batch: int = 2, steps: int = 3, size: int = 32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"S2L2A": torch.randn(batch, 12, steps, size, size, generator=generator),
            "S1RTC": torch.randn(batch, 2, steps, size, size, generator=generator)}  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "merge"),
    [
        (dict(), lambda maps: torch.stack(maps).mean(0)),
        (dict(temporal_merge="max"), lambda maps: torch.stack(maps).max(0).values),
        (dict(temporal_merge="concat", num_timesteps=3), lambda maps: torch.cat(maps, dim=1)),
        (dict(temporal_merge="diff", temporal_subset_lengths=[1, 2]), lambda maps: maps[0] - (maps[1] + maps[2]) / 2),
    ],
)
def test_backbone_merges_time_steps_like_terratorch(settings, merge):
    """Each time step goes through the encoder; the stages are merged over time (TerraTorch's TemporalWrapper)."""
    backbone = TerraMindBackbone(config(out_indices=[2, 4], **settings)).eval()
    x = series()
    with torch.no_grad():
        maps = backbone(**x).feature_maps
        per_step = TerraMindBackbone(config(out_indices=[2, 4])).eval()
        per_step.load_state_dict(backbone.state_dict())
        steps = [per_step(**{k: v[:, :, t] for k, v in x.items()}).feature_maps for t in range(3)]
    for stage, feature_map in enumerate(maps):
        torch.testing.assert_close(feature_map, merge([step[stage] for step in steps]), rtol=1e-5, atol=1e-5)
    assert backbone.channels == [32 * (3 if settings.get("temporal_merge") == "concat" else 1)] * 2


def test_static_inputs_repeat_over_time_and_heads_take_series():
    backbone = TerraMindBackbone(config(out_indices=[4])).eval()
    x = series()
    static = x["S1RTC"][:, :, 0]
    with torch.no_grad():
        mixed = backbone(S2L2A=x["S2L2A"], S1RTC=static).feature_maps[0]
        steps = [backbone(S2L2A=x["S2L2A"][:, :, t], S1RTC=static).feature_maps[0] for t in range(3)]
    torch.testing.assert_close(mixed, torch.stack(steps).mean(0), rtol=1e-5, atol=1e-5)
    segmentation = TerraMindForSemanticSegmentation(config(temporal_merge="concat", num_timesteps=3, **SMALL_HEAD))
    output = segmentation(**x, labels=torch.randint(0, 5, (2, 32, 32)))
    assert output.logits.shape == (2, 5, 32, 32)
    output.loss.backward()
    classifier = TerraMindForImageClassification(config(num_labels=4, temporal_merge="max"))
    assert classifier(**x, labels=torch.tensor([0, 3])).logits.shape == (2, 4)
    regression = TerraMindForPixelRegression(config(decode_head="fcn", **SMALL_HEAD))
    assert regression(x).logits.shape == (2, 1, 32, 32)


def test_temporal_setting_errors():
    with pytest.raises(StrictDataclassError, match="'concat' needs num_timesteps"):
        config(temporal_merge="concat")
    with pytest.raises(StrictDataclassError, match="temporal_merge must be one of"):
        config(temporal_merge="sum")
    with pytest.raises(StrictDataclassError, match="must add up to num_timesteps=3"):
        config(num_timesteps=3, temporal_subset_lengths=[1, 1])
    with pytest.raises(StrictDataclassError, match="difference of two time steps"):
        config(temporal_merge="diff", num_timesteps=3)
    backbone = TerraMindBackbone(config(temporal_merge="concat", num_timesteps=2))
    with pytest.raises(ValueError, match="built for num_timesteps=2"):
        backbone(**series(steps=3))
    with pytest.raises(ValueError, match=r"give inputs as \(B, C, T, H, W\)"):
        backbone(**inputs(1, 32, 32))
    with pytest.raises(ValueError, match="same number of time steps"):
        TerraMindBackbone(config())(S2L2A=series(steps=3)["S2L2A"], S1RTC=series(steps=2)["S1RTC"])
    with pytest.raises(ValueError, match="needs exactly two time steps"):
        TerraMindBackbone(config(temporal_merge="diff"))(**series(steps=3))


def test_saved_head_with_new_options_loads_as_remote_code(tmp_path):
    """The task module's helpers (losses, temporal merging, tiling) travel with a saved folder: it loads with
    trust_remote_code where `terramind` is not importable, and gives the same logits and loss."""
    from conftest import run_without_package

    model = TerraMindForSemanticSegmentation(config(modalities=["S2L2A"], loss={"ce": 0.5, "dice": 0.5},
                                                    head_dropout=0.1, **SMALL_HEAD)).eval()  # fmt: skip
    model.save_pretrained(tmp_path / "model")
    x, labels = torch.randn(1, 12, 2, 32, 32), torch.randint(0, 5, (1, 32, 32))
    torch.save({"x": x, "labels": labels}, tmp_path / "inputs.pt")
    stdout = run_without_package(f"""
        import torch
        from transformers import AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path / "model")!r},
                                                                 trust_remote_code=True).eval()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            output = model(inputs["x"], labels=inputs["labels"])
        torch.save((output.logits, output.loss), {str(tmp_path / "out.pt")!r})
        print(type(model).__module__)
    """, tmp_path)  # fmt: skip
    assert "terramind" not in stdout.split(".")[0]
    logits, loss = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        reference = model(x, labels=labels)
    torch.testing.assert_close(logits, reference.logits)
    torch.testing.assert_close(loss, reference.loss)


def test_heads_take_token_grids_also_next_to_time_series():
    model = TerraMindForSemanticSegmentation(config(modalities=["S2L2A", "LULC"], **SMALL_HEAD)).eval()
    grid = torch.randint(0, 100, (2, 2, 2))
    with torch.no_grad():
        single = model(S2L2A=series(steps=2)["S2L2A"][:, :, 0], input_tokens={"LULC": grid}).logits
        steps = model(S2L2A=series(steps=2)["S2L2A"], input_tokens={"LULC": grid}).logits
    assert single.shape == steps.shape == (2, 5, 32, 32)
