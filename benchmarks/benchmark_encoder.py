"""Encoder throughput and peak memory: TerraMindModel (fp32, bf16) vs the original TerraMindViT (fp32).

Not part of the test suite. The original is used when `terratorch` is importable on its own (see
../shared/reference/README.md: `pip install --no-deps terratorch==1.2.13 einops` and put the directory with
`terratorch_reference.py` on PYTHONPATH or pass --reference-path).

    python benchmarks/benchmark_encoder.py --variant base --batch-sizes 1 4 8
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terramind import TerraMindConfig, TerraMindModel  # noqa: E402
from terramind.conversion.checkpoint import convert_state_dict  # noqa: E402


def load_original(variant: str, modalities: list[str], reference_path: str | None):
    if reference_path:
        sys.path.insert(0, reference_path)
    try:
        from terratorch_reference import reference
    except ImportError:
        return None
    try:
        return reference().BACKBONE_REGISTRY[f"terramind_v1_{variant}"](modalities=modalities).eval()
    except Exception as error:  # noqa: BLE001 - the reference is optional
        print(f"original unavailable: {error}")
        return None


def ours_from_original(original, variant: str, modalities: list[str]) -> TerraMindModel:
    config = TerraMindConfig.from_variant(variant, modalities=modalities)
    model = TerraMindModel(config).eval()
    converted = convert_state_dict({k: v for k, v in original.state_dict().items()})
    converted = {k.removeprefix("terramind."): v for k, v in converted.items()}
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected and not [k for k in missing if "missing_modality" not in k], (missing, unexpected)
    return model


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="base", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-path", default=str(Path(__file__).resolve().parents[2] / "shared" / "reference"))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    modalities = ["S2L2A", "S1GRD"]
    torch.manual_seed(0)
    original = load_original(args.variant, modalities, args.reference_path)
    if original is not None:
        ours = ours_from_original(original, args.variant, modalities)
    else:
        ours = TerraMindModel(TerraMindConfig.from_variant(args.variant, modalities=modalities)).eval()
    ours_bf16 = TerraMindModel(ours.config).eval().to(torch.bfloat16)
    ours_bf16.load_state_dict(ours.state_dict())
    rows = []
    for batch in args.batch_sizes:
        x = {"S2L2A": torch.randn(batch, 12, 224, 224), "S1GRD": torch.randn(batch, 2, 224, 224)}
        row = {"batch": batch}
        with torch.inference_mode():
            reference_out = original(dict(x))[-1] if original is not None else None
            ours_out = ours(**x).last_hidden_state
            bf16_out = ours_bf16(**x).last_hidden_state
            if reference_out is not None:
                row["max_rel_err_fp32"] = float((ours_out - reference_out).abs().max() / reference_out.abs().max())
                row["max_rel_err_bf16"] = float((bf16_out.float() - reference_out).abs().max() / reference_out.abs().max())
                row["original_fp32_img_s"] = batch / timed(lambda x=x: original(dict(x)), args.repeats)
            row["ours_fp32_img_s"] = batch / timed(lambda x=x: ours(**x), args.repeats)
            row["ours_bf16_img_s"] = batch / timed(lambda x=x: ours_bf16(**x), args.repeats)
        gc.collect()
        rows.append(row)
        print(json.dumps(row))
    row = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
