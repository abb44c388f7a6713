"""One tile end to end: TerraMind generation (tokens per second) and tokenizer decoding (seconds), random weights.

Not part of the test suite. Sizes are those of a released variant (default tiny) and the v1 tokenizer presets.

    python benchmarks/benchmark_generation.py --variant tiny --outputs LULC S2L2A --timesteps 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terramind import TerraMindConfig, TerraMindForGeneration, TerraMindTokenizerConfig, TerraMindTokenizerModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="tiny", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--outputs", nargs="+", default=["LULC", "S2L2A"])
    parser.add_argument("--decoding-steps", type=int, default=1)
    parser.add_argument("--timesteps", type=int, default=10)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = TerraMindForGeneration(TerraMindConfig.from_variant(args.variant)).eval().to(dtype)
    tokenizers = {m: TerraMindTokenizerModel(TerraMindTokenizerConfig.from_modality(m)).eval().to(dtype)
                  for m in args.outputs}  # fmt: skip
    s2 = torch.randn(1, 12, 224, 224)
    model.generate(S2L2A=s2, output_modalities=args.outputs[:1], decode=False)  # warm-up
    start = time.perf_counter()
    tokens = model.generate(S2L2A=s2, output_modalities=args.outputs, decoding_steps=args.decoding_steps,
                            decode=False, seed=0)  # fmt: skip
    token_seconds = time.perf_counter() - start
    row = {"variant": args.variant, "dtype": args.dtype, "outputs": args.outputs,
           "tokens_per_second": round(196 * len(args.outputs) / token_seconds, 1)}  # fmt: skip
    for name, grid in tokens.items():
        start = time.perf_counter()
        with torch.inference_mode():
            tokenizers[name].decode_tokens(grid, timesteps=args.timesteps, generator=torch.Generator().manual_seed(0))
        row[f"decode_{name}_s"] = round(time.perf_counter() - start, 2)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
