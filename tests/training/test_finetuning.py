"""Fine-tuning: GeoTIFF datasets, metrics, Trainer (full and LoRA) on real TerraMesh tiles, adapters, DDP."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors.torch import load_file
from transformers import EvalPrediction, TrainingArguments

from terramind import TerraMindConfig, TerraMindModel
from terramind.modeling_terramind_tasks import TerraMindForSemanticSegmentation
from terramind.training.data_terramind import (
    TerraMindDataCollator,
    build_compute_metrics,
    build_dataset,
    segmentation_metrics,
)
from terramind.training.finetuning import FinetuningArguments, apply_lora, finetune, weights_digest

REPO = Path(__file__).resolve().parents[2]
TILES = REPO / "samples" / "terramesh"  # 3 tiles with S2L2A, S1RTC and LULC (classes 0-9)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_decoder_layers=1, hidden_act="gelu",
            gated_mlp=False)  # fmt: skip
HEAD = dict(decoder_hidden_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


def tiny_config(**kwargs) -> TerraMindConfig:
    return TerraMindConfig(**{**TINY, "modalities": ["S2L2A", "S1RTC"], "num_labels": 10, **kwargs})


def training_args(output_dir: Path, **kwargs) -> TrainingArguments:
    params = dict(output_dir=str(output_dir), max_steps=30, per_device_train_batch_size=3, learning_rate=3e-3,
                  logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
                  dataloader_num_workers=0)  # fmt: skip
    params.update(kwargs)
    return TrainingArguments(**params)


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# ----------------------------------------------------------------------------- data
def test_dataset_reads_tiles_lazily_and_collates():
    dataset = build_dataset(TILES, ["S2L2A", "S1RTC"], label_dir="LULC", config=tiny_config())
    assert dataset.column_names == ["sample_id", "pixel_values", "labels"]
    assert dataset.with_format(None)["sample_id"] == ["282D_485L_3_3", "433D_629L_3_1", "637U_59R_1_3"]
    sample = dataset[0]
    assert set(sample) == {"S2L2A", "S1RTC", "labels", "sample_id"} and sample["sample_id"] == "282D_485L_3_3"
    assert sample["S2L2A"].shape == (12, 224, 224) and sample["S1RTC"].shape == (2, 224, 224)
    assert sample["labels"].dtype == torch.int64 and set(sample["labels"].unique().tolist()) == {1, 2, 6, 9}
    assert abs(sample["S2L2A"].mean().item()) < 2  # standardized with the v1 statistics
    batch = TerraMindDataCollator()([dataset[i] for i in range(3)])
    assert set(batch) == {"S2L2A", "S1RTC", "labels"}
    assert batch["S2L2A"].shape == (3, 12, 224, 224) and batch["labels"].shape == (3, 224, 224)


def test_dataset_split_crop_flip_and_label_map(tmp_path):
    split = tmp_path / "train.txt"
    split.write_text("433D_629L_3_1\n637U_59R_1_3.tif\n")
    dataset = build_dataset(TILES, {"S2L2A": "S2L2A", "S1RTC": TILES / "S1RTC"}, label_dir=TILES / "LULC",
                            split=split, num_labels=3, label_map={1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 9: 2},
                            crop_size=(64, 96), random_crop=True, random_flip=True)  # fmt: skip
    assert len(dataset) == 2
    sample = dataset[1]
    assert sample["S2L2A"].shape == (12, 64, 96) and sample["labels"].shape == (64, 96)
    assert set(sample["labels"].unique().tolist()) <= {0, 1, 2}


def copy_tiles(target: Path, modalities=("S2L2A", "S1RTC", "LULC")) -> Path:
    for modality in modalities:
        shutil.copytree(TILES / modality, target / modality)
    return target


def write_label(path: Path, values: np.ndarray) -> None:
    with rasterio.open(TILES / "LULC" / "282D_485L_3_3.tif") as src:
        profile = dict(src.profile)
    profile.update(width=values.shape[-1], height=values.shape[-2], count=values.shape[0], dtype=values.dtype.name)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)


def test_dataset_errors_before_training(tmp_path):
    root = copy_tiles(tmp_path / "data")
    config = tiny_config()
    with pytest.raises(ValueError, match="model is configured for S2L2A, S1RTC"):
        build_dataset(TILES, ["S2L2A", "S1RTC", "DEM"], label_dir="LULC", config=config)
    with pytest.raises(ValueError, match=r"class ids \[6, 9\] outside 0..4"):
        build_dataset(TILES, ["S2L2A", "S1RTC"], label_dir="LULC", num_labels=5)
    (root / "S1RTC" / "433D_629L_3_1.tif").unlink()
    with pytest.raises(ValueError, match=r"S1RTC .* lacks 1 sample\(s\): \['433D_629L_3_1'\]"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    root = copy_tiles(tmp_path / "data2")
    write_label(root / "LULC" / "282D_485L_3_3.tif", np.ones((1, 112, 112), np.uint8))
    with pytest.raises(ValueError, match=r"LULC/282D_485L_3_3.tif is 112x112, /\S+/S2L2A/282D_485L_3_3.tif of the same "
                       "sample is 224x224"):  # fmt: skip
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    write_label(root / "LULC" / "282D_485L_3_3.tif", np.ones((2, 224, 224), np.uint8))
    with pytest.raises(ValueError, match="has 2 bands"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    with pytest.raises(ValueError, match="Split file"):
        build_dataset(TILES, ["S2L2A"], label_dir="LULC", num_labels=10, split=tmp_path / "none.txt")


def rewrite(path: Path, values=None, **changes) -> None:
    """Rewrite a GeoTIFF in place with other profile settings and/or band values (`values(data) -> data`)."""
    with rasterio.open(path) as src:
        data, profile = src.read(), dict(src.profile)
    if values is not None:
        data = values(data)
    profile.update(count=data.shape[0], **changes)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def test_every_sample_is_checked_before_training(tmp_path):
    """A bad file in the last sample fails in build_dataset, naming its full path, not in the middle of training."""
    config = tiny_config()
    last = "637U_59R_1_3.tif"  # the last of the three samples
    root = copy_tiles(tmp_path / "truncated")
    data = (root / "S1RTC" / last).read_bytes()
    (root / "S1RTC" / last).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{root / 'S1RTC' / last}: .*(damaged or truncated|not a readable)"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    root = copy_tiles(tmp_path / "crs")
    rewrite(root / "S1RTC" / last, crs="EPSG:4326")
    with pytest.raises(ValueError, match=f"{root / 'S1RTC' / last} is in EPSG:4326, {root / 'S2L2A' / last} of the "
                       "same sample in"):  # fmt: skip
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    root = copy_tiles(tmp_path / "bands")
    rewrite(root / "S2L2A" / last, values=lambda data: data[:11])
    with pytest.raises(ValueError, match=f"{root / 'S2L2A' / last} has 11 bands, .*282D_485L_3_3.tif has 12"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)
    root = copy_tiles(tmp_path / "shifted")
    with rasterio.open(root / "S1RTC" / last) as src:
        shifted = src.transform @ rasterio.Affine.translation(3, 0)
    rewrite(root / "S1RTC" / last, transform=shifted)
    with pytest.raises(ValueError, match="different geotransforms"):
        build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config)


def test_compute_metrics():
    labels = np.array([[[0, 0, 1, 1], [2, 2, -100, 1]]])
    predictions = np.array([[[0, 1, 1, 1], [2, 0, 0, 1]]])
    metrics = segmentation_metrics(predictions, labels, num_labels=3)
    # IoU: class 0 = 1/3, class 1 = 3/4, class 2 = 1/2
    assert metrics["mIoU"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    logits = np.eye(3)[predictions].transpose(0, 3, 1, 2)  # (B, C, H, W) logits give the same
    compute = build_compute_metrics("segmentation", num_labels=3)
    assert compute(EvalPrediction(predictions=logits, label_ids=labels))["mIoU"] == metrics["mIoU"]
    rmse = build_compute_metrics("regression")(EvalPrediction(predictions=np.array([[[1.0, 3.0]]]),
                                                              label_ids=np.array([[[2.0, np.nan]]])))  # fmt: skip
    assert rmse == {"rmse": 1.0, "mae": 1.0}
    accuracy = build_compute_metrics("classification")(EvalPrediction(predictions=np.array([[0.1, 0.9], [2.0, 1.0]]),
                                                                      label_ids=np.array([1, 1])))  # fmt: skip
    assert accuracy == {"accuracy": 0.5}


# ----------------------------------------------------------------------------- training
def load_script():
    path = REPO / "scripts" / "finetune_segmentation.py"
    spec = importlib.util.spec_from_file_location("finetune_segmentation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_full_finetuning_overfits_real_tiles(tmp_path):
    """scripts/finetune_segmentation.py, full fine-tuning of a tiny random model on the 3 tiles (S2L2A + S1RTC ->
    LULC): the loss falls well below its start within 30 steps, and mIoU is logged."""
    result = load_script().main([
        "--data_root", str(TILES), "--modalities", "S2L2A", "S1RTC", "--label_dir", "LULC", "--num_labels", "10",
        "--variant", "tiny", "--config_overrides", json.dumps({**TINY, **HEAD}), "--output_dir", str(tmp_path),
        "--max_steps", "30", "--per_device_train_batch_size", "3", "--learning_rate", "3e-3", "--logging_steps", "1",
        "--report_to", "none", "--save_strategy", "no", "--use_cpu", "--seed", "0", "--disable_tqdm", "true",
    ])  # fmt: skip
    history = losses(result.trainer)
    assert len(history) == 30
    assert np.mean(history[-5:]) < 0.4 * history[0], history
    assert result.eval_metrics["eval_mIoU"] > 0.3
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "preprocessor_config.json").exists()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """LoRA fine-tuning of a saved tiny 'pretrained' TerraMind on the tiles, through `finetune`."""
    folder = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    TerraMindModel(tiny_config()).save_pretrained(folder / "base")
    args = FinetuningArguments(data_root=str(TILES), model_name_or_path=str(folder / "base"), num_labels=10,
                               use_lora=True, lora_r=8, lora_alpha=16, config_overrides=json.dumps(HEAD))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = finetune(args, training_args(folder / "adapter", learning_rate=1e-2))
    finally:
        torch.set_num_threads(threads)
    return folder, result


def test_lora_finetuning_overfits(lora_run):
    _, result = lora_run
    history = losses(result.trainer)
    assert np.mean(history[-5:]) < 0.4 * history[0], history
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)


def test_lora_adapter_holds_no_base_weights(lora_run):
    folder, result = lora_run
    adapter = load_file(folder / "adapter" / "adapter_model.safetensors")
    base = {k for k in result.model.get_base_model().state_dict() if k.startswith("terramind.")}
    task = ("base_model.model.feature_neck.", "base_model.model.decode_head.")
    assert all(".lora_A." in k or ".lora_B." in k or k.startswith(task) for k in adapter)
    assert not any(k.removeprefix("base_model.model.") in base for k in adapter)
    # exactly r * (in + out) per adapted linear layer (qkv, proj, fc1, fc2 of the blocks; proj of the patch embeddings)
    fresh = TerraMindModel.from_pretrained(folder / "base")
    targets = [m for n, m in fresh.named_modules() if n.rsplit(".", 1)[-1] in ("qkv", "proj", "fc1", "fc2")]
    lora_size = sum(v.numel() for k, v in adapter.items() if "lora_" in k)
    assert lora_size == sum(8 * (m.in_features + m.out_features) for m in targets)


def test_lora_adapter_round_trip_and_merge(lora_run):
    """The saved adapter folder loads with PeftModel.from_pretrained onto a fresh base model: same outputs; merging
    gives the same outputs too (relative 1e-5)."""
    from peft import PeftModel

    folder, result = lora_run
    batch = TerraMindDataCollator()([result.trainer.eval_dataset[i] for i in range(2)])
    batch.pop("labels")
    trained = result.model.eval()
    with torch.no_grad():
        reference = trained(**batch).logits
    fresh = TerraMindForSemanticSegmentation.from_pretrained(folder / "base", num_labels=10, **HEAD)
    loaded = PeftModel.from_pretrained(fresh, folder / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, reference, rtol=0, atol=1e-6)
        merged = loaded.merge_and_unload().eval()
        assert isinstance(merged, TerraMindForSemanticSegmentation)
        difference = (merged(**batch).logits - reference).abs().max() / reference.abs().max()
    assert difference < 1e-5


def test_lora_on_terramind_model(tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    TerraMindModel(tiny_config()).save_pretrained(tmp_path / "base")
    model = apply_lora(TerraMindModel.from_pretrained(tmp_path / "base"), r=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    x = {"S2L2A": torch.randn(2, 12, 32, 32), "S1RTC": torch.randn(2, 2, 32, 32)}
    model.eval()
    with torch.no_grad():
        reference = model(**x).last_hidden_state
    model.save_pretrained(tmp_path / "adapter")
    assert all("lora_" in k for k in load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    loaded = PeftModel.from_pretrained(TerraMindModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).last_hidden_state, reference, rtol=0, atol=1e-6)
        merged = loaded.merge_and_unload()
        difference = (merged(**x).last_hidden_state - reference).abs().max() / reference.abs().max()
    assert difference < 1e-5


def test_lora_skips_frozen_tim_generator():
    model = TerraMindForSemanticSegmentation(tiny_config(tim_modalities=["LULC"], **HEAD))
    peft_model = apply_lora(model, r=2)
    adapted = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert adapted and not any("tim_generator" in n for n in adapted)


# ----------------------------------------------------------------------------- scale-out
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DRIVER = """
    import json, os, sys
    sys.path.insert(0, {repo!r})
    from transformers import HfArgumentParser, TrainingArguments
    from terramind.training.finetuning import FinetuningArguments, finetune, weights_digest
    args, training_args = HfArgumentParser((FinetuningArguments, TrainingArguments)).parse_args_into_dataclasses()
    result = finetune(args, training_args)
    report = {{"digest": weights_digest(result.model), "world_size": training_args.world_size,
              "steps": result.trainer.state.global_step}}
    with open(os.path.join(training_args.output_dir, f"rank{{os.environ['RANK']}}.json"), "w") as handle:
        json.dump(report, handle)
"""


def test_two_process_ddp_training_agrees(tmp_path):
    """`accelerate launch` with 2 CPU processes (torchrun + gloo): training completes and both processes hold the
    same final weights. (`--multi_gpu` selects accelerate's torchrun launcher; `--cpu` alone would start one process
    unless MPI is set up; TrainingArguments' `--use_cpu` keeps it on the CPU.)"""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER.format(repo=str(REPO))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(driver), "--data_root", str(TILES), "--variant", "tiny", "--config_overrides", json.dumps({**TINY, **HEAD}),
        "--crop_size", "64", "--random_flip", "--output_dir", str(tmp_path / "out"), "--max_steps", "3",
        "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no", "--use_cpu",
        "--disable_tqdm", "true", "--seed", "0",
    ]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((tmp_path / "out" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["steps"] for r in reports] == [3, 3]
    assert reports[0]["digest"] == reports[1]["digest"]
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_weights_digest_sees_changes():
    model = TerraMindForSemanticSegmentation(tiny_config(**HEAD))
    before = weights_digest(model)
    with torch.no_grad():
        model.decode_head.classifier.bias.add_(1e-3)
    assert weights_digest(model) != before


# ----------------------------------------------------------------------------- LoRA on q and v (replace_qkv)
def test_lora_replace_qkv_adapts_q_and_v_separately(tmp_path):
    """TerraTorch's `replace_qkv: qkv` with targets qkv.q_linear / qkv.v_linear: outputs unchanged before training;
    after training the key rows of the fused projection are untouched and q and v each change by a rank-r update;
    the adapter loads onto a plain base with PeftModel.from_pretrained."""
    from peft import PeftModel

    torch.manual_seed(0)
    TerraMindForSemanticSegmentation(tiny_config(**HEAD)).save_pretrained(tmp_path / "base")
    base = TerraMindForSemanticSegmentation.from_pretrained(tmp_path / "base").eval()
    x = {"S2L2A": torch.randn(2, 12, 32, 32), "S1RTC": torch.randn(2, 2, 32, 32)}
    with torch.no_grad():
        reference = base(**x).logits
    targets = ["qkv.q_linear", "qkv.v_linear", "mlp.fc1", "mlp.fc2"]
    model = apply_lora(base, r=2, lora_alpha=4, target_modules=targets, replace_qkv="qkv")
    with torch.no_grad():  # zero-initialised lora_B: the same numbers (up to float rounding)
        torch.testing.assert_close(model(**x).logits, reference, rtol=1e-5, atol=1e-5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(**x, labels=torch.randint(0, 10, (2, 32, 32))).loss.backward()
        optimizer.step()
    qkv = model.base_model.model.terramind.encoder.layer[0].attention.qkv
    assert qkv.lora_A["default"].weight.shape == (4, 32)  # rank 2 for each of q and v
    assert qkv.scaling["default"] == 2.0  # alpha / r of each part, as TerraTorch's separate LoRAs
    delta = qkv.lora_B["default"].weight @ qkv.lora_A["default"].weight
    query, key, value = delta.split(32)
    assert torch.equal(key, torch.zeros_like(key)) and query.abs().max() > 0 and value.abs().max() > 0
    assert torch.linalg.matrix_rank(query) == 2 and torch.linalg.matrix_rank(value) == 2
    torch.testing.assert_close(query, qkv.lora_B["default"].weight[:32, :2] @ qkv.lora_A["default"].weight[:2])
    model.eval()
    with torch.no_grad():
        trained = model(**x).logits
    model.save_pretrained(tmp_path / "adapter")
    fresh = TerraMindForSemanticSegmentation.from_pretrained(tmp_path / "base")
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, trained, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="need replace_qkv='qkv'"):
        apply_lora(TerraMindForSemanticSegmentation(tiny_config(**HEAD)), target_modules=["qkv.q_linear"])
    with pytest.raises(ValueError, match="target its parts"):
        apply_lora(TerraMindForSemanticSegmentation(tiny_config(**HEAD)), target_modules=["qkv"], replace_qkv="qkv")


# ----------------------------------------------------------------------------- time series and TerraTorch's layout
def write_like(path: Path, values: np.ndarray, like: Path) -> None:
    with rasterio.open(like) as src:
        profile = dict(src.profile, count=values.shape[0], dtype=values.dtype.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_dataset_reads_time_series_one_file_per_step_or_stacked_bands(tmp_path):
    ids = ["282D_485L_3_3", "433D_629L_3_1"]
    root = copy_tiles(tmp_path / "data", ("S1RTC", "LULC"))
    stacked = tmp_path / "stacked"
    for i, sample in enumerate(ids):
        first, second = TILES / "S2L2A" / f"{sample}.tif", TILES / "S2L2A" / f"{ids[1 - i]}.tif"
        write_like(root / "S2L2A" / f"{sample}_t0.tif", read(first), first)
        write_like(root / "S2L2A" / f"{sample}_t1.tif", read(second), first)
        both = np.stack([read(first), read(second)], axis=1).reshape(24, 224, 224)  # channel by channel
        write_like(stacked / "S2L2A" / f"{sample}.tif", both, first)
    shutil.copytree(root / "S1RTC", stacked / "S1RTC")
    shutil.copytree(root / "LULC", stacked / "LULC")
    config = tiny_config(temporal_merge="concat", num_timesteps=2, **HEAD)
    per_file = build_dataset(root, ["S2L2A", "S1RTC"], label_dir="LULC", config=config, split=ids,
                             image_grep={"S2L2A": ["*_t0.tif", "*_t1.tif"], "S1RTC": "*.tif"})  # fmt: skip
    from_bands = build_dataset(stacked, ["S2L2A", "S1RTC"], label_dir="LULC", config=config, split=ids,
                               num_timesteps={"S2L2A": 2})  # fmt: skip
    single = build_dataset(TILES, ["S2L2A", "S1RTC"], label_dir="LULC", config=tiny_config(), split=ids)
    sample = per_file[0]
    assert sample["S2L2A"].shape == (12, 2, 224, 224) and sample["S1RTC"].shape == (2, 224, 224)
    torch.testing.assert_close(sample["S2L2A"][:, 0], single[0]["S2L2A"])
    torch.testing.assert_close(sample["S2L2A"][:, 1], single[1]["S2L2A"])
    torch.testing.assert_close(from_bands[0]["S2L2A"], sample["S2L2A"])
    batch = TerraMindDataCollator()([per_file[0], per_file[1]])
    model = TerraMindForSemanticSegmentation(config)
    output = model(**{k: v[..., :64, :64] for k, v in batch.items()})
    assert output.logits.shape == (2, 10, 64, 64) and torch.isfinite(output.loss)
    (root / "S2L2A" / f"{ids[1]}_t1.tif").unlink()
    with pytest.raises(ValueError, match=r"S2L2A \(.*time step 1\) lacks 1 sample"):
        build_dataset(root, ["S2L2A"], label_dir="LULC", num_labels=10, split=ids,
                      image_grep={"S2L2A": ["*_t0.tif", "*_t1.tif"]})  # fmt: skip


def test_dataset_reads_terratorch_one_folder_layout(tmp_path):
    """TerraTorch's GenericNonGeoSegmentationDataModule layout: `*_merged.tif` images and `*.mask.tif` labels in one
    folder, a split file of sample prefixes (or file names)."""
    folder = tmp_path / "burn_scars"
    folder.mkdir()
    for sample in ("282D_485L_3_3", "433D_629L_3_1", "637U_59R_1_3"):
        shutil.copy(TILES / "S2L2A" / f"{sample}.tif", folder / f"{sample}_merged.tif")
        shutil.copy(TILES / "LULC" / f"{sample}.tif", folder / f"{sample}.mask.tif")
    (folder / "train.txt").write_text("282D_485L_3_3\n637U_59R_1_3_merged.tif\n")
    dataset = build_dataset(folder, ["S2L2A"], image_grep="*_merged.tif", label_grep="*.mask.tif",
                            split=folder / "train.txt", num_labels=10)  # fmt: skip
    assert dataset.with_format(None)["sample_id"] == ["282D_485L_3_3", "637U_59R_1_3"]
    reference = build_dataset(TILES, ["S2L2A"], label_dir="LULC", num_labels=10, split=["637U_59R_1_3"])[0]
    torch.testing.assert_close(dataset[1]["S2L2A"], reference["S2L2A"])
    assert torch.equal(dataset[1]["labels"], reference["labels"])
    with pytest.raises(ValueError, match=r"both match .*give patterns that tell images and labels apart"):
        build_dataset(folder, ["S2L2A"], label_grep="*.mask.tif", num_labels=10)
