"""Cost of fine-tuning losses and of tiled prediction (`predict_tiled`, `terramind predict`).

Random weights of a v1 architecture (the architecture is what costs, not the values). Not a test; run e.g.

    python benchmarks/benchmark_prediction.py --variant tiny --scene 1000 --tile-size 224 --overlap 64
    python benchmarks/benchmark_prediction.py --variant base --device cuda --dtype bfloat16 --scene 4096

Reports forward + backward time of each segmentation loss on (8, 10, 224, 224) logits, and for a UperNet
segmentation model on S2L2A + S1RTC: the time per tile of a plain batched forward, and the tiles per second and
time of `predict_tiled` over a scene (tiling, padding and blending included).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terramind import TerraMindConfig  # noqa: E402
from terramind.losses import SEGMENTATION_LOSSES, segmentation_loss  # noqa: E402
from terramind.modeling_terramind_tasks import TerraMindForSemanticSegmentation  # noqa: E402
from terramind.scenes.tiled import predict_tiled
from terramind.tiling import tile_starts  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def timed(fn, device: torch.device) -> float:
    """Wall-clock seconds of one call after a warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny", help="tiny, small, base or large")
    parser.add_argument("--scene", type=int, default=1000, help="scene side in pixels")
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, 224, 224, generator=generator, device="cpu").to(device).requires_grad_()
    labels = torch.randint(0, 10, (8, 224, 224), generator=generator).to(device)
    for name in SEGMENTATION_LOSSES:
        seconds = timed(lambda name=name: segmentation_loss(logits, labels, name).backward(), device)
        print(f"loss {name:6s} forward+backward (8, 10, 224, 224): {seconds * 1000:7.1f} ms")

    torch.manual_seed(0)
    config = TerraMindConfig.from_variant(args.variant, modalities=["S2L2A", "S1RTC"], num_labels=10)
    model = TerraMindForSemanticSegmentation(config).to(device, DTYPES[args.dtype]).eval()
    tile = {"S2L2A": torch.randn(args.batch_size, 12, args.tile_size, args.tile_size),
            "S1RTC": torch.randn(args.batch_size, 2, args.tile_size, args.tile_size)}  # fmt: skip
    tile = {k: v.to(device, DTYPES[args.dtype]) for k, v in tile.items()}
    with torch.no_grad():
        forward = timed(lambda: model(**tile), device) / args.batch_size
    scene = {"S2L2A": torch.randn(1, 12, args.scene, args.scene), "S1RTC": torch.randn(1, 2, args.scene, args.scene)}
    tiles = len(tile_starts(args.scene, args.tile_size, args.tile_size - args.overlap)) ** 2
    seconds = timed(lambda: predict_tiled(model, scene, tile_size=args.tile_size, overlap=args.overlap,
                                                batch_size=args.batch_size), device)  # fmt: skip
    print(f"TerraMind-{args.variant} UperNet, {args.dtype} on {args.device}: forward {forward * 1000:.0f} ms/tile; "
          f"predict_tiled {args.scene}x{args.scene} ({tiles} tiles of {args.tile_size}, overlap {args.overlap}): "
          f"{seconds:.1f} s, {tiles / seconds:.2f} tiles/s ({seconds / tiles * 1000:.0f} ms/tile)")  # fmt: skip


if __name__ == "__main__":
    main()
