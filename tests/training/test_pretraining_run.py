"""`terramind pretrain` on the sample tiles with a tiny generator and tiny tokenizers: the loss falls, evaluation
per target modality (held-out new data and the original data side by side), the saved folder generates, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import mini_tokenizer, tiny_config

from terramind import TerraMindForGeneration
from terramind.training.pretraining import main

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "terramesh"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    for name in ("S2L2A", "S1RTC", "DEM", "LULC"):  # DEM: one of the three tiles (samples lacking a modality)
        shutil.copytree(SAMPLES / name, root / "data" / name)
    mini_tokenizer("LULC").save_pretrained(root / "lulc")
    mini_tokenizer("S1RTC").save_pretrained(root / "s1rtc")
    torch.manual_seed(0)
    config = tiny_config(image_size=224, modalities=["S2L2A"], hidden_size=64, num_attention_heads=2,
                         num_decoder_layers=2)  # fmt: skip
    TerraMindForGeneration(config, modalities=["S2L2A", "S1RTC", "DEM", "LULC", "S1RTC_TOKENS"]).save_pretrained(
        root / "model")
    return {"root": root, "data": root / "data", "model": root / "model", "lulc": root / "lulc",
            "s1rtc": root / "s1rtc"}  # fmt: skip


def arguments(setup: dict[str, Path], output: Path, steps: int, *extra: str) -> list[str]:
    return ["--data_root", str(setup["data"]), "--input_modalities", "S2L2A", "S1RTC", "DEM",
            "--target_modalities", "S1RTC", "LULC", "--tokenizer", f"LULC={setup['lulc']}",
            f"S1RTC={setup['s1rtc']}", "--model_name_or_path", str(setup["model"]), "--output_dir", str(output),
            "--crop_size", "64", "--input_budget", "12", "--target_budget", "12", "--dirichlet_alpha", "1.0",
            "--cache_dir", str(setup["root"] / "cache"), "--max_steps", str(steps), "--learning_rate", "5e-3",
            "--lr_scheduler_type", "constant", "--per_device_train_batch_size", "3", "--logging_steps", "5",
            "--report_to", "none", "--use_cpu", "--seed", "0", "--save_strategy", "no", *extra]  # fmt: skip


def test_pretrain_lowers_the_loss_and_evaluates_per_modality(setup, tmp_path):
    output = tmp_path / "run"
    main(arguments(setup, output, 40, "--eval_data_root", str(setup["data"]), "--eval_fraction", "0.34",
                   "--eval_strategy", "steps", "--eval_steps", "20"))  # fmt: skip
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < 0.7 * losses[0], losses
    assert any("loss_LULC" in entry and "loss_S1RTC" in entry for entry in history if "loss" in entry)
    assert len([entry for entry in history if "eval_original_loss_LULC" in entry]) >= 2  # at steps 20 and 40
    last = {key: value for entry in history for key, value in entry.items() if key.startswith("eval_")}
    for prefix in ("eval_new_", "eval_original_"):  # held-out new samples and the original data, side by side
        for name in ("S1RTC", "LULC"):
            assert last[f"{prefix}loss_{name}"] > 0 and 0 <= last[f"{prefix}token_accuracy_{name}"] <= 1
    # the saved folder loads and generates, its tokenizers found through the config
    model = TerraMindForGeneration.from_pretrained(output).eval()
    assert model.config.tokenizer_paths["LULC"] == str(setup["lulc"])
    tokens = model.generate(S2L2A=torch.randn(1, 12, 64, 64), output_modalities=["LULC"], decode=False, seed=0)
    assert tokens["LULC"].shape == (1, 4, 4)
    # and fine-tuning takes its encoder: a task model loads the trained blocks
    from terramind import TerraMindForSemanticSegmentation

    task = TerraMindForSemanticSegmentation.from_pretrained(output, modalities=["S2L2A"], num_labels=3)
    key = "terramind.encoder.layer.0.attention.qkv.weight"
    assert torch.equal(task.state_dict()[key], model.state_dict()[key])
    assert not torch.equal(model.state_dict()[key],
                           TerraMindForGeneration.from_pretrained(setup["model"]).state_dict()[key])  # it trained


def test_resume_continues_the_same_curve(setup, tmp_path, monkeypatch):
    """A run stopped at a checkpoint and resumed trains only the steps left and logs the losses of an uninterrupted
    run (within tolerance)."""
    from terramind.training.pretraining import PretrainingTrainer

    def run(output: Path, *extra: str) -> list[float]:
        argv = arguments(setup, output, 12, *extra)
        argv[argv.index("--logging_steps") + 1] = "3"
        main(argv)
        return [e["loss"] for e in json.loads((output / "trainer_state.json").read_text())["log_history"] if "loss" in e]

    reference = run(tmp_path / "whole")
    parts = tmp_path / "parts"
    run(parts, "--save_strategy", "steps", "--save_steps", "6")  # HfArgumentParser: the last value wins
    shutil.rmtree(parts / "checkpoint-12")
    (parts / "trainer_state.json").unlink()
    steps = []
    original = PretrainingTrainer.training_step
    monkeypatch.setattr(PretrainingTrainer, "training_step",
                        lambda self, *a, **k: steps.append(1) or original(self, *a, **k))  # fmt: skip
    resumed = run(parts, "--resume_from_checkpoint", str(parts / "checkpoint-6"))
    assert len(steps) == 6
    assert len(resumed) == len(reference) == 4
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(reference), rtol=0.05, atol=0.05)


def test_cli_pretrain_bad_input_is_one_line(setup, tmp_path, capsys):
    from terramind.cli import main as cli_main

    argv = arguments(setup, tmp_path / "bad", 1)
    argv[argv.index("--tokenizer") + 1] = "LULC"
    assert cli_main(["pretrain", *argv]) == 2
    assert "--tokenizer takes MODALITY=PATH" in capsys.readouterr().err
    argv = arguments(setup, tmp_path / "bad", 1)
    argv[argv.index("--target_modalities") + 1] = "S2L1C"
    assert cli_main(["pretrain", *argv]) == 2


def test_coordinates_are_text_token_inputs(setup, tmp_path):
    """Coordinates (the tile centre from its georeference) enter as text tokens, counted in the input budget."""
    from conftest import coords_tokenizer

    from terramind.training.pretraining import AnyToAnyCollator, AnyToAnyMasking
    from terramind.training.pretraining_data import build_pretraining_dataset, raster_center_lonlat

    lon, lat = raster_center_lonlat(SAMPLES / "S2L2A" / "282D_485L_3_3.tif")
    assert -180 <= lon <= 180 and -90 <= lat <= 90
    coords_tokenizer().save_pretrained(tmp_path / "coords")
    torch.manual_seed(0)
    config = tiny_config(image_size=224, modalities=["S2L2A"], tokenizer_paths={"LULC": str(setup["lulc"]),
                                                                                "Coordinates": str(tmp_path / "coords")})
    model = TerraMindForGeneration(config, modalities=["S2L2A", "LULC", "Coordinates"])
    data = build_pretraining_dataset(setup["data"], ["S2L2A", "Coordinates"], ["LULC"], model, crop_size=32,
                                     cache_dir=tmp_path / "cache")  # fmt: skip
    assert torch.allclose(data[0]["pixel_values"]["Coordinates"], torch.tensor([lon, lat]))
    collate = AnyToAnyCollator(AnyToAnyMasking(3, 2, 1.0), ["S2L2A", "Coordinates"], ["LULC"],
                               sequence_tokens={"Coordinates": 3})  # fmt: skip
    batch = collate([data[i] for i in range(3)])
    assert batch["pixel_values"]["Coordinates"].shape == (3, 2) and batch["input_masks"]["Coordinates"].shape == (3, 3)
    given = batch["input_masks"]["S2L2A"].sum(1) + batch["input_masks"]["Coordinates"].sum(1)
    assert given.tolist() == [3, 3, 3]
    out = model(**batch)
    assert torch.isfinite(out.loss)
    model.save_pretrained(tmp_path / "model")  # the command: the tile centres of every sample, a few steps
    argv = arguments(setup, tmp_path / "run", 2)
    argv = [*argv[:3], "S2L2A", "Coordinates", "--target_modalities", "LULC", *argv[argv.index("--tokenizer"):]]
    argv[argv.index("--model_name_or_path") + 1] = str(tmp_path / "model")
    argv[argv.index("--logging_steps") + 1] = "1"
    losses = [e["loss"] for e in main(argv).state.log_history if "loss" in e]
    assert len(losses) == 2 and all(0 < loss < 100 for loss in losses)


def test_tokens_are_cached_in_shards_and_a_killed_run_resumes(setup, tmp_path, monkeypatch):
    """Tokenizing writes one cache file per shard; a run that lost a shard (killed) tokenizes only that one."""
    from terramind.training import pretraining_data

    model = TerraMindForGeneration.from_pretrained(setup["model"], tokenizer_paths={"LULC": str(setup["lulc"])})
    build = dict(input_modalities=["S2L2A"], target_modalities=["LULC"], model=model, crop_size=32,
                 cache_dir=tmp_path, shard_size=1)  # fmt: skip
    first = pretraining_data.build_pretraining_dataset(setup["data"], **build)
    shards = sorted(tmp_path.glob("pretraining-tokens-*.arrow"))
    assert len(shards) == 3
    shards[1].unlink()
    calls = []
    original = pretraining_data.TokenGridTokenizer.__call__
    monkeypatch.setattr(pretraining_data.TokenGridTokenizer, "__call__",
                        lambda self, batch: calls.append(batch["token_paths"]) or original(self, batch))  # fmt: skip
    again = pretraining_data.build_pretraining_dataset(setup["data"], **build)
    assert len(calls) == 1 and len(calls[0]) == 1  # the lost shard only
    for row in range(3):
        assert torch.equal(again[row]["tokens"]["LULC"], first[row]["tokens"]["LULC"])
