"""Fine-tuning: Trainer (full and LoRA) on real TerraMesh tiles, adapters, DDP. The datasets are tested in
test_data_terramind.py, the metrics in test_metrics.py."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from terramind import TerraMindConfig, TerraMindModel
from terramind.modeling_terramind_tasks import TerraMindForSemanticSegmentation
from terramind.training.data_collator import TerraMindDataCollator
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
