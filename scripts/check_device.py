"""The README's main job on an accelerator, checked against the CPU: run it before a release on any GPU machine.

    python scripts/check_device.py --device cuda --dtype bf16      (scripts/check_gpu.sh does this)

Random weights at the real TerraMind-tiny width (TerraMind-1.0-tiny's architecture; `--width narrow` for a quick
run) and random tokenizers at the released architectures, on the shipped sample scene widened to 224 x 320 so that
generation is tiled. Each job runs through the `terramind` command line on the CPU in fp32 (the reference), on the
device in fp32 and on the device in `--dtype`:

- embed: GeoTIFF embeddings; fp32 within 1e-3, `--dtype` within 5e-2 (relative to the largest value);
- generate (LULC then S2L2A, greedy, tiled, 2 diffusion steps): LULC classes agree on >= 99 % of the pixels in fp32
  (>= 50 % in `--dtype`: greedy choices between near-equal random logits flip), S2L2A within 10 % in fp32;
- finetune (LoRA, 3 steps): the first logged loss within 1e-2 in fp32 (cuDNN uses TF32) and 5e-2 in `--dtype`;
- predict, when this version of `terramind` has it: the same output as on the CPU (>= 99 % equal classes in fp32).

Every output is also checked for its georeference, data type and nodata value. Prints one line per check and a
summary; exit code 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCENE = ROOT / "samples" / "terramesh"
TILE = "282D_485L_3_3.tif"
NARROW = dict(hidden_size=32, num_hidden_layers=2, num_decoder_layers=1, num_attention_heads=2, intermediate_size=64)
NARROW_TOKENIZERS = {  # the narrow architectures of the test suite's golden tokenizer files
    "S2L2A": dict(image_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, decoder_patch_size=4,
                  unet_model_channels=32, unet_num_res_blocks=1, unet_attention_resolutions=[2],
                  unet_channel_mult=[1, 2], unet_num_heads=1),
    "LULC": dict(image_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
}  # fmt: skip


def build_assets(folder: Path, width: str) -> dict[str, Path]:
    """Random-weight model and tokenizers (seeded), and a 224 x 320 scene from the sample tile."""
    import torch

    from terramind import TerraMindConfig, TerraMindForGeneration, TerraMindProcessor
    from terramind.configuration_terramind_tokenizer import TerraMindTokenizerConfig
    from terramind.modeling_terramind_tokenizer import TerraMindTokenizerModel

    torch.manual_seed(0)
    config = TerraMindConfig.from_variant("tiny", **(NARROW if width == "narrow" else {}))
    TerraMindForGeneration(config).save_pretrained(folder / "model")
    TerraMindProcessor().save_pretrained(folder / "model")
    assets = {"model": folder / "model"}
    for modality in ("S2L2A", "LULC"):
        extra = NARROW_TOKENIZERS[modality] if width == "narrow" else {}
        tokenizer = TerraMindTokenizerModel(TerraMindTokenizerConfig.from_modality(modality, **extra))
        tokenizer.save_pretrained(folder / f"tokenizer_{modality}")
        assets[modality] = folder / f"tokenizer_{modality}"
    for modality in ("S2L2A", "S1RTC"):
        with rasterio.open(SCENE / modality / TILE) as src:
            data, profile = src.read(), src.profile
        wide = np.concatenate([data, data[:, :, ::-1][:, :, :96]], axis=2)
        profile.update(width=wide.shape[2])
        with rasterio.open(folder / f"{modality}.tif", "w", **profile) as dst:
            dst.write(wide)
        assets[f"scene_{modality}"] = folder / f"{modality}.tif"
    return assets


def finetune(output_dir: Path, argv: list[str]) -> float:
    """`terramind finetune` (its Python entry point, which returns the trainer): the wall time; the first logged
    training loss goes to output_dir/first_loss.json."""
    from transformers import set_seed

    from terramind.training.finetuning import main

    set_seed(0)  # the new head and the LoRA weights are drawn before Trainer seeds: the same on every device
    start = time.perf_counter()
    result = main([str(a) for a in argv])
    seconds = time.perf_counter() - start
    losses = [entry["loss"] for entry in result.trainer.state.log_history if "loss" in entry]
    (output_dir / "first_loss.json").write_text(json.dumps(losses[0]))
    return seconds


def run(argv: list[str]) -> float:
    """One `terramind` command in this process; its wall time."""
    from terramind.cli import main

    start = time.perf_counter()
    code = main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"terramind {' '.join(map(str, argv))} exited with {code}")
    return time.perf_counter() - start


def read(path: Path) -> tuple[np.ndarray, dict]:
    """Values and georeference of a GeoTIFF (nodata as a string, so that NaN compares equal to NaN)."""
    with rasterio.open(path) as src:
        meta = {"crs": src.crs, "transform": src.transform, "dtype": src.dtypes[0], "nodata": str(src.nodata)}
        return src.read(), meta


def relative(a: np.ndarray, b: np.ndarray) -> float:
    valid = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[valid] - b[valid]).max() / max(np.abs(b[valid]).max(), 1e-12))


def has_predict() -> bool:
    from terramind.cli.app import build_parser

    return "predict" in build_parser().format_help()


def jobs(assets: dict[str, Path], out: Path, device: str, dtype: str) -> dict[str, float]:
    """Run the main job on one device and precision; wall time per job."""
    common = ["--device", device, "--dtype", dtype, "--no-progress"]
    times = {}
    times["embed"] = run(["embed", "--model", assets["model"], "--input", f"S2L2A={assets['scene_S2L2A']}",
                          "--input", f"S1RTC={assets['scene_S1RTC']}", "--output", out / "emb.tif", *common])  # fmt: skip
    times["generate"] = run(["generate", "--model", assets["model"], "--input", f"S1RTC={assets['scene_S1RTC']}",
                             "--output-modalities", "LULC,S2L2A", "--output-dir", out / "generated",
                             "--tokenizer", f"LULC={assets['LULC']}", "--tokenizer", f"S2L2A={assets['S2L2A']}",
                             "--temperature", "0", "--timesteps", "2", "--batch-size", "2", *common])  # fmt: skip
    device_options = (["--use_cpu"] if device == "cpu" else []) + (["--bf16"] if dtype == "bf16" else [])
    times["finetune"] = finetune(out / "finetuned", ["--data_root", SCENE, "--modalities", "S2L2A", "S1RTC", "--label_dir", "LULC",
                             "--num_labels", "11", "--model_name_or_path", assets["model"], "--use_lora", "--crop_size",
                             "64", "--output_dir", out / "finetuned", "--max_steps", "3", "--logging_steps", "1",
                             "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
                             "--seed", "0", "--disable_tqdm", "true", *device_options])  # fmt: skip
    if has_predict() and (out / "finetuned").exists():
        times["predict"] = run(["predict", "--model", assets["model"], "--adapter", out / "finetuned", "--input",
                                f"S2L2A={assets['scene_S2L2A']}", "--input", f"S1RTC={assets['scene_S1RTC']}",
                                "--output", out / "predicted.tif", *common])  # fmt: skip
    return times


def first_loss(folder: Path) -> float | None:
    path = folder / "first_loss.json"
    return json.loads(path.read_text()) if path.exists() else None


def compare(reference: Path, candidate: Path, strict: bool, report: list[tuple[str, bool, str]], label: str) -> None:
    """Checks of one run against the CPU fp32 run."""
    tolerance = 1e-3 if strict else 5e-2
    ref, ref_meta = read(reference / "emb.tif")
    got, meta = read(candidate / "emb.tif")
    same_meta = meta == ref_meta and np.array_equal(np.isnan(got), np.isnan(ref))
    error = relative(got, ref)
    report.append((f"{label} embed", same_meta and error <= tolerance, f"relative error {error:.2e} (<= {tolerance})"))
    ref, ref_meta = read(reference / "generated" / "LULC.tif")
    got, meta = read(candidate / "generated" / "LULC.tif")
    agreement = float((got == ref).mean())
    need = 0.99 if strict else 0.5
    report.append((f"{label} generate LULC", meta == ref_meta and agreement >= need,
                   f"{agreement:.1%} of the classes equal (>= {need:.0%})"))  # fmt: skip
    ref, ref_meta = read(reference / "generated" / "S2L2A.tif")
    got, meta = read(candidate / "generated" / "S2L2A.tif")
    error = relative(got.astype(np.float64), ref.astype(np.float64))
    ok = meta == ref_meta and (error <= 0.1 or not strict)
    report.append((f"{label} generate S2L2A", ok, f"relative error {error:.2e}" + (" (<= 1e-1)" if strict else "")))
    ref_loss, loss = first_loss(reference / "finetuned"), first_loss(candidate / "finetuned")
    if ref_loss is not None and loss is not None:
        error, bound = abs(loss - ref_loss) / abs(ref_loss), 1e-2 if strict else 5e-2  # cuDNN convolutions use TF32
        report.append((f"{label} finetune", error <= bound,
                       f"first loss {loss:.4f} vs {ref_loss:.4f} on the CPU (relative {error:.1e} <= {bound})"))  # fmt: skip
    if (reference / "predicted.tif").exists() and (candidate / "predicted.tif").exists():
        ref, ref_meta = read(reference / "predicted.tif")
        got, meta = read(candidate / "predicted.tif")
        agreement = float((got == ref).mean())
        report.append((f"{label} predict", meta == ref_meta and (agreement >= 0.99 or not strict),
                       f"{agreement:.1%} equal"))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device to check, e.g. cuda, cuda:1")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"], help="its lower precision")
    parser.add_argument("--width", default="tiny", choices=["tiny", "narrow"], help="tiny: the released width")
    parser.add_argument("--work-dir", help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        assets = build_assets(work / "assets", args.width)
        runs = [("cpu", "fp32"), (args.device, "fp32")] + ([(args.device, args.dtype)] if args.dtype != "fp32" else [])
        report: list[tuple[str, bool, str]] = []
        reference = work / "0_cpu_fp32"
        for index, (device, dtype) in enumerate(runs):
            out = work / f"{index}_{device.replace(':', '_')}_{dtype}"
            times = jobs(assets, out, device, dtype)
            print(f"{device} {dtype}: " + ", ".join(f"{job} {seconds:.1f} s" for job, seconds in times.items()))
            if index:
                compare(reference, out, dtype == "fp32", report, f"{device} {dtype}")
        for name, ok, detail in report:
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        failed = [name for name, ok, _ in report if not ok]
        print(f"{len(report) - len(failed)} of {len(report)} checks passed" + (f"; failed: {failed}" if failed else ""))
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
