"""Decoding cost of the TerraMind v1 tokenizers: time per tile per diffusion step, fp32 vs bf16.

Random weights of a v1 preset (the architecture is what costs, not the values). Not a test; run e.g.

    python benchmarks/benchmark_tokenizer.py --modality S2L2A --image-size 224 --batch-size 1 2 --steps 2
    python benchmarks/benchmark_tokenizer.py --device cuda --batch-size 1 8 --steps 10

Reports, per dtype and batch size, the DDIM decode time divided by (tiles x UNet evaluations), the encode time per
tile, and for reference the one-pass ViT decode of the LULC tokenizer per tile.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terramind.configuration_terramind_tokenizer import TerraMindTokenizerConfig  # noqa: E402
from terramind.modeling_terramind_tokenizer import TerraMindTokenizerModel  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best of `repeats` wall-clock seconds after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def build(modality: str, dtype: torch.dtype) -> TerraMindTokenizerModel:
    """A v1 preset with random weights (seeded)."""
    torch.manual_seed(0)
    return TerraMindTokenizerModel(TerraMindTokenizerConfig.from_modality(modality)).to(dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", default="S2L2A", help="diffusion tokenizer preset (S2L2A, S1GRD, DEM, ...)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps requested (trailing spacing)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-lulc", action="store_true", help="skip the ViT-decoder (LULC) reference")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"TerraMind tokenizer decode benchmark: {args.modality}, {args.image_size}x{args.image_size} tiles, "
          f"{name}, torch {torch.__version__}")  # fmt: skip
    torch.set_grad_enabled(False)
    header = f"{'model':<14}{'dtype':<10}{'batch':>6}{'evals':>7}{'decode s':>11}{'ms/tile/step':>14}"
    print(header + f"{'encode ms/tile':>16}")
    for dtype_name in args.dtypes:
        diffusion_rows(build(args.modality, DTYPES[dtype_name]), args, device, dtype_name)
        if not args.skip_lulc:
            lulc_rows(build("LULC", DTYPES[dtype_name]), args, device, dtype_name)


def diffusion_rows(model: TerraMindTokenizerModel, args: argparse.Namespace, device: torch.device, dtype: str) -> None:
    model = model.to(device).eval()
    grid = args.image_size // model.config.patch_size
    evaluations = len(model.noise_scheduler.timesteps(args.steps))
    for batch in args.batch_size:
        tokens = torch.randint(0, model.config.codebook_size, (batch, grid, grid), device=device)
        pixels = torch.randn(batch, model.config.num_channels, args.image_size, args.image_size, device=device)
        decode = partial(model.decode_tokens, tokens, timesteps=args.steps, generator=torch.Generator().manual_seed(0))
        seconds = timed(decode, device, args.repeats)
        encode_seconds = timed(partial(model.encode, pixels), device, args.repeats)
        print(f"{args.modality:<14}{dtype:<10}{batch:>6}{evaluations:>7}{seconds:>11.3f}"
              f"{1000 * seconds / (batch * evaluations):>14.1f}{1000 * encode_seconds / batch:>16.1f}")  # fmt: skip


def lulc_rows(model: TerraMindTokenizerModel, args: argparse.Namespace, device: torch.device, dtype: str) -> None:
    model = model.to(device).eval()
    grid = args.image_size // model.config.patch_size
    for batch in args.batch_size:
        tokens = torch.randint(0, model.config.codebook_size, (batch, grid, grid), device=device)
        seconds = timed(partial(model.decode_tokens, tokens), device, args.repeats)
        print(f"{'LULC (ViT)':<14}{dtype:<10}{batch:>6}{1:>7}{seconds:>11.3f}{1000 * seconds / batch:>14.1f}")

if __name__ == "__main__":
    main()
