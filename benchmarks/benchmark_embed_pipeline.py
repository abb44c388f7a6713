"""The whole `embed` pipeline (GeoTIFF files -> tile loader -> encoder -> GeoParquet) against the bare encoder.

Not part of the test suite. Writes `--scenes` synthetic scenes (mosaics of the sample tiles, S2L2A + S1GRD, of
`--scene-size` pixels), then measures tiles per second of (a) the bare model on tensors already on the device and
(b) the pipeline of `terramind embed --output x.parquet` with `--num-workers` loader processes, on the same model,
batch size and tiles. The loader is not the bottleneck when (b) / (a) is near 1 (goal: >= 0.9 on a CPU with 2
workers, >= 0.8 on a GPU). Random weights; the model's load time is not counted.

    python benchmarks/benchmark_embed_pipeline.py --variant tiny --scenes 12 --batch-size 8
    python benchmarks/benchmark_embed_pipeline.py --variant base --device cuda --dtype bf16 --batch-size 64 \\
        --scenes 64 --scene-size 1792 --num-workers 8 [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terramind import TerraMindConfig, TerraMindModel  # noqa: E402
from terramind.cli.hardware import cpu_has_native_bf16  # noqa: E402
from terramind.scenes.discovery import find_scenes  # noqa: E402
from terramind.scenes.embedding import GeoParquetSink, embed_scenes  # noqa: E402
from terramind.scenes.engine import TileGrid  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "terramesh"
SOURCES = {"S2L2A": "S2L2A", "S1GRD": "S1RTC"}  # the S1 sample tiles stand in for S1GRD
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def write_scenes(folder: Path, count: int, size: int) -> dict[str, str]:
    """`count` scenes of size x size pixels per modality, mosaics of the sample tiles; {modality: folder}."""
    for modality, source in SOURCES.items():
        tiles = []
        for path in sorted((SAMPLES / source).glob("*.tif")):
            with rasterio.open(path) as src:
                tiles.append(src.read())
                profile = dict(src.profile)
        (folder / modality).mkdir(parents=True)
        reps = -(-size // 224)
        for index in range(count):
            order = [tiles[(index + k) % len(tiles)] for k in range(reps * reps)]
            rows = [np.concatenate(order[r * reps : (r + 1) * reps], axis=2) for r in range(reps)]
            mosaic = np.concatenate(rows, axis=1)[:, :size, :size]
            profile.update(height=size, width=size, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
            with rasterio.open(folder / modality / f"scene{index:04d}.tif", "w", **profile) as dst:
                dst.write(mosaic)
    return {modality: str(folder / modality) for modality in SOURCES}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_model(model, tiles: int, batch: int, tile: int, device: str, dtype: torch.dtype) -> float:
    """Tiles per second of the model on inputs already on the device."""
    inputs = {"S2L2A": torch.randn(batch, 12, tile, tile), "S1GRD": torch.randn(batch, 2, tile, tile)}
    inputs = {name: value.to(device, dtype) for name, value in inputs.items()}
    with torch.inference_mode():
        for _ in range(2):  # warm-up (and compilation)
            model(**inputs).last_hidden_state.float().cpu()
        synchronize(device)
        start = time.perf_counter()
        done = 0
        while done < tiles:
            model(**inputs).last_hidden_state.float().cpu()  # the pipeline copies its outputs back too
            done += batch
        synchronize(device)
    return done / (time.perf_counter() - start)


def pipeline(model, inputs: dict[str, str], output: Path, batch: int, tile: int, workers: int, device: str,
             dtype: torch.dtype) -> tuple[float, int]:  # fmt: skip
    """Tiles per second of files -> loader threads -> model -> GeoParquet parts (the scene engine), and the
    number of tiles."""
    scenes = find_scenes(inputs)
    sink = GeoParquetSink(output, "benchmark", per_patch=False)
    output.mkdir(parents=True)
    tiles = 0
    start = time.perf_counter()
    for run, _ in embed_scenes(model, scenes, sink, tile, batch, max(1, workers), device, dtype, progress=False):
        tiles += run.tiles
    sink.close()
    synchronize(device)
    return tiles / (time.perf_counter() - start), tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--scene-size", type=int, default=448, help="pixels per side (224 per tile)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    config = TerraMindConfig.from_variant(args.variant, modalities=list(SOURCES))
    model = TerraMindModel(config).eval().to(args.device, dtype)
    if args.compile:
        model = torch.compile(model)
    with tempfile.TemporaryDirectory() as work:
        inputs = write_scenes(Path(work) / "scenes", args.scenes, args.scene_size)
        tiles = args.scenes * len(TileGrid.plan(args.scene_size, args.scene_size, 224, 0, 16, shrink=True))
        pipeline(model, inputs, Path(work) / "warmup.parquet", args.batch_size, 224, 0, args.device, dtype)  # warm-up
        bare = bare_model(model, tiles, args.batch_size, 224, args.device, dtype)
        piped, counted = pipeline(model, inputs, Path(work) / "out.parquet", args.batch_size, 224, args.num_workers,
                                  args.device, dtype)  # fmt: skip
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {
        "variant": args.variant, "device": device, "dtype": args.dtype, "batch_size": args.batch_size,
        "compile": args.compile, "num_workers": args.num_workers, "tiles": counted, "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(), "bare_tiles_per_s": round(bare, 2),
        "pipeline_tiles_per_s": round(piped, 2), "pipeline_over_bare": round(piped / bare, 3),
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
