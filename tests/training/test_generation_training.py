"""Fine-tuning the generator: its loss, the tokenized-target dataset, Trainer, LoRA adapters and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import mini_tokenizer, tiny_config
from transformers import Trainer, TrainingArguments

from terramind import TerraMindForGeneration
from terramind.training.data_collator import TerraMindDataCollator
from terramind.training.data_generation import build_generation_dataset, token_accuracy_metrics, token_predictions

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "terramesh"


def generator(seed: int = 0, **kwargs) -> TerraMindForGeneration:
    torch.manual_seed(seed)
    config = tiny_config(image_size=224, modalities=["S2L2A"], **kwargs)
    model = TerraMindForGeneration(config, modalities=["S2L2A", "S1RTC", "LULC", "DEM_TOKENS"])
    model.terramind.set_tokenizer("LULC", mini_tokenizer("LULC"))
    return model


# ----------------------------------------------------------------------------- the loss
def test_loss_is_the_cross_entropy_of_the_target_tokens():
    """One target: the mean cross-entropy over its tokens; two targets: the sum; ignored tokens (-100) do not count."""
    model = generator().eval()
    x = torch.randn(2, 12, 64, 64)
    lulc = torch.randint(0, 4375, (2, 4, 4))
    lulc[0, 0, :2] = -100
    dem = torch.randint(0, 15360, (2, 4, 4))
    out = model(S2L2A=x, labels={"LULC": lulc, "DEM": dem})
    assert out.logits["LULC"].shape == (2, 16, 4375) and out.logits["DEM"].shape == (2, 16, 15360)
    expected = sum(F.cross_entropy(out.logits[m].flatten(0, 1), t.flatten(), ignore_index=-100)
                   for m, t in (("LULC", lulc), ("DEM", dem)))  # fmt: skip
    torch.testing.assert_close(out.loss, expected)
    # by hand for one token: -log softmax at the label
    logits = model(S2L2A=x, target_modalities=["LULC"]).logits["LULC"]
    torch.testing.assert_close(logits, out.logits["LULC"])
    manual = -torch.log_softmax(logits[1, 5], dim=-1)[lulc[1].flatten()[5]]
    single = F.cross_entropy(logits[1, 5:6], lulc[1].flatten()[5:6])
    torch.testing.assert_close(single, manual)


def test_revealed_target_tokens_condition_the_rest():
    """With `reveal_fraction`, revealed tokens join the context and only the others are predicted and scored."""
    model = generator().eval()
    x = torch.randn(2, 12, 64, 64)
    lulc = torch.randint(0, 4375, (2, 4, 4))
    torch.manual_seed(3)
    out = model(S2L2A=x, labels={"LULC": lulc}, reveal_fraction=0.5)
    positions = out.predicted_positions["LULC"]
    assert len(positions) == 8 and out.logits["LULC"].shape == (2, 8, 4375)
    expected = F.cross_entropy(out.logits["LULC"].flatten(0, 1), lulc.flatten(1)[:, positions].flatten())
    torch.testing.assert_close(out.loss, expected)
    hidden_only = model(S2L2A=x, labels={"LULC": lulc}).logits["LULC"][:, positions]
    assert not torch.allclose(hidden_only, out.logits["LULC"])  # the revealed tokens changed the context
    # training draws a fraction in [0, target_reveal_rate]; evaluation reveals nothing
    model.config.target_reveal_rate = 0.9
    model.train()
    sizes = {model(S2L2A=x, labels={"LULC": lulc}).logits["LULC"].shape[1] for _ in range(8)}
    assert len(sizes) > 1 and max(sizes) <= 16
    model.eval()
    assert model(S2L2A=x, labels={"LULC": lulc}).predicted_positions is None
    with pytest.raises(ValueError, match="reveal_fraction"):
        model(S2L2A=x, labels={"LULC": lulc}, reveal_fraction=1.0)


def test_coordinates_loss_is_teacher_forced_and_ignores_padding():
    """Coordinates targets are token ids: the decoder reads [S_1] + labels[:-1] causally and padding (0) does not
    count; the logits equal those of stepwise decoding."""
    from conftest import coords_tokenizer

    torch.manual_seed(0)
    config = tiny_config(image_size=224, modalities=["S2L2A"])
    model_with_coords = TerraMindForGeneration(config, modalities=["S2L2A", "LULC", "Coordinates"]).eval()
    model_with_coords.terramind.set_tokenizer("Coordinates", coords_tokenizer())
    x = torch.randn(2, 12, 32, 32)
    labels = torch.tensor([[20, 30, 0], [21, 31, 40]])
    out = model_with_coords(S2L2A=x, labels={"Coordinates": labels})
    logits = out.logits["Coordinates"]
    assert logits.shape[:2] == (2, 3)
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)
    torch.testing.assert_close(out.loss, expected)
    start, _ = model_with_coords.terramind.get_tokenizer("Coordinates").convert_tokens_to_ids(["[S_1]", "[S_2]"])
    context, _ = model_with_coords.encode_context(model_with_coords.terramind.collect_inputs(None, {"S2L2A": x}))
    with torch.no_grad():
        first, _ = model_with_coords.decode_sequence("Coordinates", context, torch.full((2, 1), start))
    torch.testing.assert_close(first[:, 0], logits[:, 0].detach())


def test_loss_errors_and_empty_batches():
    model = generator().eval()
    x = torch.randn(1, 12, 32, 32)
    with pytest.raises(ValueError, match="token grid matching"):
        model(S2L2A=x, labels={"LULC": torch.zeros(1, 3, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="integer tensor"):
        model(S2L2A=x, labels={"LULC": torch.zeros(1, 2, 2)})
    with pytest.raises(ValueError, match="not a target of this generator"):
        model(S2L2A=x, target_modalities=["NDVI"])
    ignored = torch.full((1, 2, 2), -100)
    assert model(S2L2A=x, labels={"LULC": ignored}).loss.item() == 0.0


# ----------------------------------------------------------------------------- data
def test_dataset_tokenizes_targets_once_and_caches(tmp_path):
    model = generator()
    data = build_generation_dataset(SAMPLES, ["S2L2A"], ["LULC"], model, cache_dir=tmp_path)
    assert len(data) == 3 and len(list(tmp_path.glob("tokens-*.arrow"))) == 1
    row = data[0]
    assert row["S2L2A"].shape == (12, 224, 224) and row["labels"]["LULC"].shape == (14, 14)
    from terramind.training.transforms import TerraMindSampleTransform

    lulc = TerraMindSampleTransform(task="classification").process_sample(
        {"LULC": str(SAMPLES / "LULC" / f"{row['sample_id']}.tif")})["LULC"]  # fmt: skip
    expected = model.terramind.get_tokenizer("LULC").encode(lulc[None]).tokens[0]
    assert torch.equal(row["labels"]["LULC"], expected)
    batch = TerraMindDataCollator()([data[0], data[1]])
    assert batch["labels"]["LULC"].shape == (2, 14, 14) and batch["S2L2A"].shape == (2, 12, 224, 224)

    from terramind.training import data_generation

    def fail(*args, **kwargs):
        raise AssertionError("targets were tokenized again")

    original = data_generation.TargetTokenizer.__call__
    data_generation.TargetTokenizer.__call__ = fail
    try:
        again = build_generation_dataset(SAMPLES, ["S2L2A"], ["LULC"], model, cache_dir=tmp_path)
    finally:
        data_generation.TargetTokenizer.__call__ = original
    assert torch.equal(again[0]["labels"]["LULC"], row["labels"]["LULC"])
    with pytest.raises(ValueError, match="both input and target"):
        build_generation_dataset(SAMPLES, ["LULC"], ["LULC"], model, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- training
def train(model, data, tmp_path, steps: int, lr: float = 3e-3) -> Trainer:
    args = TrainingArguments(str(tmp_path / "run"), max_steps=steps, per_device_train_batch_size=3, learning_rate=lr,
                             lr_scheduler_type="constant",
                             logging_steps=5, report_to="none", use_cpu=True, save_strategy="no", seed=0,
                             label_names=["labels"], per_device_eval_batch_size=3)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                      data_collator=TerraMindDataCollator(), compute_metrics=token_accuracy_metrics,
                      preprocess_logits_for_metrics=token_predictions)  # fmt: skip
    trainer.train()
    return trainer


def test_trainer_memorises_the_sample_tiles(tmp_path):
    """On the real sample tiles a tiny generator's loss falls, and afterwards greedy generation on the training
    tiles reproduces their LULC tokens (memorisation)."""
    model = generator(hidden_size=64, num_attention_heads=2, num_decoder_layers=2)
    data = build_generation_dataset(SAMPLES, ["S2L2A"], ["LULC"], model, cache_dir=tmp_path, crop_size=64)
    trainer = train(model, data, tmp_path, steps=80, lr=5e-3)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.2 * losses[0], losses
    # Memorised, not pinned: the last few tokens depend on the CPU's matmul kernels and thread count (AVX2,
    # AVX-512, AMX give 0.98 to 1.0); an untrained model scores about 1 / (the codebook size).
    metrics = trainer.evaluate()
    assert metrics["eval_token_accuracy_LULC"] >= 0.95, metrics
    batch = TerraMindDataCollator()([data[i] for i in range(3)])
    model.eval()
    tokens = model.generate(S2L2A=batch["S2L2A"], output_modalities=["LULC"], decode=False, temperature=0)
    agreement = (tokens["LULC"] == batch["labels"]["LULC"]).float().mean().item()
    assert agreement >= 0.95, agreement


def test_lora_adapter_round_trip_and_merge(tmp_path):
    """LoRA on the generator: adapters in encoder and decoder blocks only, small; PeftModel.from_pretrained on the
    base reproduces the trained outputs exactly; merging gives the same outputs."""
    from peft import PeftModel

    from terramind.training.finetuning import apply_lora

    base_folder = tmp_path / "base"
    mini_tokenizer("LULC").save_pretrained(tmp_path / "lulc")
    generator(seed=1, tokenizer_paths={"LULC": str(tmp_path / "lulc")}).save_pretrained(base_folder)
    model = apply_lora(TerraMindForGeneration.from_pretrained(base_folder), r=4)
    adapted = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapted and all("lora_" in n for n in adapted)
    assert any(".decoder.layer." in n and "cross_attention.kv" in n for n in adapted)
    assert any(".terramind.encoder.layer." in n for n in adapted)
    assert not any("embeddings" in n for n in adapted)
    data = build_generation_dataset(SAMPLES, ["S2L2A"], ["LULC"], model, cache_dir=tmp_path / "cache", crop_size=32)
    train(model, data, tmp_path, steps=3, lr=1e-2)
    model.save_pretrained(tmp_path / "adapter")
    size = sum(f.stat().st_size for f in (tmp_path / "adapter").glob("*.safetensors"))
    assert size < 0.2 * (base_folder / "model.safetensors").stat().st_size
    x = torch.randn(1, 12, 64, 64)
    model.eval()
    with torch.no_grad():
        trained = model(S2L2A=x, target_modalities=["LULC"]).logits["LULC"]
        loaded = PeftModel.from_pretrained(TerraMindForGeneration.from_pretrained(base_folder), tmp_path / "adapter")
        assert torch.equal(loaded.eval()(S2L2A=x, target_modalities=["LULC"]).logits["LULC"], trained)
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(S2L2A=x, target_modalities=["LULC"]).logits["LULC"], trained,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        base = TerraMindForGeneration.from_pretrained(base_folder).eval()
        assert not torch.allclose(base(S2L2A=x, target_modalities=["LULC"]).logits["LULC"], trained)


def test_finetune_cli_generation(tmp_path):
    """`terramind finetune --task generation`: a generator folder, a local tokenizer, token accuracy reported."""
    from terramind.training.finetuning import main

    generator().save_pretrained(tmp_path / "model")
    mini_tokenizer("LULC").save_pretrained(tmp_path / "lulc")
    data = tmp_path / "data"
    for name in ("S2L2A", "LULC"):
        shutil.copytree(SAMPLES / name, data / name)
    result = main(["--task", "generation", "--data_root", str(data), "--modalities", "S2L2A",
                   "--target_modalities", "LULC", "--model_name_or_path", str(tmp_path / "model"),
                   "--config_overrides", f'{{"tokenizer_paths": {{"LULC": "{tmp_path / "lulc"}"}}}}',
                   "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--per_device_train_batch_size", "3",
                   "--report_to", "none", "--use_cpu", "--use_lora"])  # fmt: skip
    assert 0.0 <= result.eval_metrics["eval_token_accuracy_LULC"] <= 1.0
    assert (tmp_path / "run" / "adapter_config.json").exists()
