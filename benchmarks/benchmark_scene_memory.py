"""Peak memory and tiles/s of embed, predict and generate on synthetic Sentinel-2-granule-like scenes (issue 19).

Makes S2L2A (12 bands, int16, 512-px tiles, deflate, like an L2A granule) and S1RTC (2 bands, float32 dB) scenes
of the given sides with rasterio, block row by block row, a TerraMind-1.0-tiny encoder and a tiny UperNet
segmentation model (64 channels) with random weights, and runs each (command, side) in a fresh process, reporting its peak RSS
(`VmHWM`) and tiles/s (whole command: loading, reading, model, writing). With `--baseline-src` (a checkout of
the pre-streaming package, e.g. `git archive 4dfc979 terramind | tar -x -C /tmp/baseline`) the old whole-scene
path runs too, in the same run, for the sides in `--baseline-sides`. Not a test; e.g.

    python benchmarks/benchmark_scene_memory.py --sides 2048 5490 --baseline-src /tmp/baseline --baseline-sides 2048 5490
    python benchmarks/benchmark_scene_memory.py --sides 10980
    python benchmarks/benchmark_scene_memory.py --commands generate --sides 2048 4096
    python benchmarks/benchmark_scene_memory.py --commands generate-engine --sides 2048 4096 10980

Temporary scenes and outputs live under --workdir and are deleted at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

S2_BANDS = ("COASTAL_AEROSOL", "BLUE", "GREEN", "RED", "RED_EDGE_1", "RED_EDGE_2", "RED_EDGE_3", "NIR_BROAD",
            "NIR_NARROW", "WATER_VAPOR", "SWIR_1", "SWIR_2")  # fmt: skip
BLOCK = 512

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
spec = json.loads(sys.argv[2])
start = time.perf_counter()
if spec["impl"] == "old":
    from terramind.cli import main
    main(spec["argv"])
else:
    import torch
    from terramind.scenes.discovery import Scene
    if spec["command"] == "embed":
        from terramind import TerraMindModel
        from terramind.scenes.embedding import GeoTiffSink, embed_scenes
        model = TerraMindModel.from_pretrained(spec["model"]).eval()
        sink = GeoTiffSink(spec["output"], overwrite=True)
        for run, _ in embed_scenes(model, [Scene("scene", spec["inputs"])], sink, tile_size=224, batch_size=8,
                                   num_workers=1, progress=False):
            pass
    elif spec["command"] in ("generate", "generate-engine"):
        from terramind import TerraMindForGeneration, TerraMindImageProcessor
        from terramind.scenes.generation import generate_scenes
        model = TerraMindForGeneration.from_pretrained(spec["model"]).eval()
        if spec["command"] == "generate-engine":  # the outputs' shapes without the model time: engine and writers
            def random_outputs(tiles, output_modalities, generator=None, decode=True, **options):
                count, side = len(tiles["S1RTC"]), tiles["S1RTC"].shape[-1]
                return {"S2L2A": torch.randn(count, 12, side, side), "LULC": torch.randn(count, 10, side, side)}
            model.generate = random_outputs
        processor = TerraMindImageProcessor(do_pad=True, size_divisor=16)
        for run in generate_scenes(model, [{"S1RTC": spec["inputs"]["S1RTC"]}], [spec["output"]], ["S2L2A", "LULC"],
                                   processor, tile_size=224, overlap=64, batch_size=8, overwrite=True,
                                   progress=False, timesteps=spec["timesteps"], temperature=0.0):
            pass
    else:
        from terramind.scenes.prediction import load_predictor, predict_to_files
        model, processor = load_predictor(spec["model"])
        predict_to_files(model, spec["inputs"], spec["output"], processor=processor, tile_size=224, overlap=64,
                         batch_size=8, progress=False, overwrite=True)
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: ru_maxrss survives fork + exec, so a child would report its parent's peak if larger
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("RESULT", json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}))
"""


def make_scene(folder: Path, side: int) -> dict[str, str]:
    """S2L2A and S1RTC GeoTIFFs of side x side pixels on one UTM grid, written a block row at a time."""
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    transform = from_origin(600000, 5000040, 10, 10)
    common = dict(driver="GTiff", height=side, width=side, crs="EPSG:32632", transform=transform, tiled=True,
                  blockxsize=BLOCK, blockysize=BLOCK, compress="deflate")  # fmt: skip
    paths = {"S2L2A": folder / "S2L2A.tif", "S1RTC": folder / "S1RTC.tif"}
    rng = np.random.default_rng(0)
    cols = np.arange(side, dtype=np.float32)
    with rasterio.open(paths["S2L2A"], "w", count=12, dtype="int16", nodata=0, **common) as s2, \
            rasterio.open(paths["S1RTC"], "w", count=2, dtype="float32", **common) as s1:  # fmt: skip
        for index, name in enumerate(S2_BANDS, start=1):
            s2.set_band_description(index, name)
        s1.set_band_description(1, "VV")
        s1.set_band_description(2, "VH")
        for top in range(0, side, BLOCK):
            rows = np.arange(top, min(side, top + BLOCK), dtype=np.float32)[:, None]
            field = np.sin(rows / 97.0) * np.cos(cols / 131.0) + 0.5 * np.sin((rows + cols) / 23.0)  # smooth land cover
            window = rasterio.windows.Window(0, top, side, rows.shape[0])
            bands = [1500 + 800 * field * (1 + 0.1 * b) + rng.normal(0, 40, field.shape) for b in range(12)]
            s2.write(np.clip(np.stack(bands), 1, 12000).astype(np.int16), window=window)
            vv = -11 + 3 * field + rng.normal(0, 0.5, field.shape)
            s1.write(np.stack([vv, vv - 6]).astype(np.float32), window=window)
    return {name: str(path) for name, path in paths.items()}


def make_models(folder: Path) -> dict[str, str]:
    """A TerraMind-1.0-tiny encoder, a tiny UperNet segmentation model (10 classes, 64 channels) and a
    TerraMind-1.0-tiny generator with tokenizers of the v1 S2L2A (FSQ-VAE, patched-UNet diffusion decoder) and LULC
    (FSQ-VAE, ViT decoder) architectures, all with random weights."""
    import torch

    from terramind import TerraMindConfig, TerraMindForGeneration, TerraMindImageProcessor, TerraMindModel
    from terramind.configuration_terramind_tokenizer import TerraMindTokenizerConfig
    from terramind.modeling_terramind_tasks import TerraMindForSemanticSegmentation
    from terramind.modeling_terramind_tokenizer import TerraMindTokenizerModel

    torch.manual_seed(0)
    modalities = ["S2L2A", "S1RTC"]
    TerraMindModel(TerraMindConfig.from_variant("tiny", modalities=modalities)).save_pretrained(folder / "encoder")
    segmentation = TerraMindForSemanticSegmentation(TerraMindConfig.from_variant("tiny", modalities=modalities,
                                                                                 num_labels=10, decoder_hidden_size=64))  # fmt: skip
    segmentation.save_pretrained(folder / "segmentation")
    TerraMindImageProcessor().save_pretrained(folder / "segmentation")
    tokenizers = {"S2L2A": TerraMindTokenizerConfig(modality="S2L2A", num_channels=12),
                  "LULC": TerraMindTokenizerConfig(modality="LULC", num_channels=10, num_classes=10, decoder_type="vit",
                                                   fsq_levels=(7, 5, 5, 5, 5))}  # fmt: skip
    for name, config in tokenizers.items():
        TerraMindTokenizerModel(config).save_pretrained(folder / f"tokenizer-{name}")
    paths = {name: str(folder / f"tokenizer-{name}") for name in tokenizers}
    TerraMindForGeneration(TerraMindConfig.from_variant("tiny", modalities=["S1RTC"], tokenizer_paths=paths)
                           ).save_pretrained(folder / "generator")  # fmt: skip
    return {"embed": str(folder / "encoder"), "predict": str(folder / "segmentation"),
            "generate": str(folder / "generator")}  # fmt: skip


def tiles_of(command: str, side: int) -> int:
    from terramind.scenes.engine import TileGrid

    overlap = 0 if command == "embed" else 64
    return len(TileGrid.plan(side, side, 224, overlap, 16, shrink=command == "embed"))


def run_case(impl: str, source: Path, command: str, model: str, inputs: dict[str, str], output: Path,
             timesteps: int = 2) -> dict:
    argv = [command, "--model", model, *[a for name, path in inputs.items() for a in ("--input", f"{name}={path}")],
            "--output", str(output), "--tile-size", "224", "--batch-size", "8", "--no-progress", "--overwrite"]  # fmt: skip
    spec = {"impl": impl, "command": command, "model": model, "inputs": inputs, "output": str(output), "argv": argv,
            "timesteps": timesteps}
    env = dict(os.environ, PYTHONPATH=str(source))
    done = subprocess.run([sys.executable, "-c", CHILD, str(source), json.dumps(spec)], env=env, capture_output=True,
                          text=True)  # fmt: skip
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not result:
        return {"error": (done.stderr.strip().splitlines() or ["killed"])[-1], "returncode": done.returncode}
    return json.loads(result[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 5490, 10980])
    parser.add_argument("--commands", nargs="+", default=["embed", "predict"],
                        choices=["embed", "predict", "generate", "generate-engine"],
                        help="generate-engine: generate with random model outputs of the real shapes (12-band S2L2A, "
                             "10-class LULC logits), to measure the engine and writers at sizes the model is too slow for")  # fmt: skip
    parser.add_argument("--timesteps", type=int, default=2, help="diffusion steps of the S2L2A decoder (generate)")
    parser.add_argument("--baseline-src", type=Path, help="a checkout of the pre-streaming package (old path)")
    parser.add_argument("--baseline-sides", type=int, nargs="*", default=[2048])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scenes and outputs")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="terramind-scene-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        models = make_models(workdir / "models")
        for side in args.sides:
            inputs = make_scene(workdir / f"scene{side}", side)
            for command in args.commands:
                impls = [("new", ROOT)] + ([("old", args.baseline_src)] if args.baseline_src and
                                           side in args.baseline_sides else [])  # fmt: skip
                for impl, source in impls:
                    if impl == "old" and command.startswith("generate"):
                        continue
                    output = workdir / f"{impl}-{command}-{side}" if command.startswith("generate") else \
                        workdir / f"{impl}-{command}-{side}.tif"  # fmt: skip
                    result = run_case(impl, source, command, models[command.split("-")[0]], inputs, output, args.timesteps)
                    tiles = tiles_of(command, side)
                    row = {"impl": impl, "command": command, "side": side, "tiles": tiles, **result}
                    if "seconds" in result:
                        row["tiles_per_s"] = tiles / result["seconds"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    for leftover in workdir.glob(f"{impl}-{command}-{side}*"):
                        if leftover.is_dir():
                            shutil.rmtree(leftover)
                        else:
                            leftover.unlink()
            shutil.rmtree(workdir / f"scene{side}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n| command | side (px) | tiles | implementation | peak RSS (MB) | time (s) | tiles/s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if "seconds" in row:
            print(f"| {row['command']} | {row['side']} | {row['tiles']} | {row['impl']} | {row['peak_mb']:.0f} | "
                  f"{row['seconds']:.1f} | {row['tiles_per_s']:.2f} |")
        else:
            print(f"| {row['command']} | {row['side']} | {row['tiles']} | {row['impl']} | failed: {row['error']} | | |")


if __name__ == "__main__":
    main()
