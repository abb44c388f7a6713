"""onnxruntime (fp32 and dynamic int8) against eager PyTorch fp32 for an exported segmentation model.

Random weights of a v1 architecture (the architecture is what costs; agreement of int8 with fp32 on random weights
is a stand-in for a trained model's). A UperNet segmentation model on S2L2A + S1RTC (10 classes) is exported with
`export_onnx`, quantized with `quantize_int8`, and run on the sample tiles (samples/terramesh, 224 x 224) in the
same process. Not a test; run e.g.

    python benchmarks/benchmark_onnx.py --variant base --repeats 3

Reports the graph's size, tiles per second of each runtime, the largest relative difference of onnxruntime fp32
to PyTorch, and for int8 the share of equal class predictions and the largest logit difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from terramind import TerraMindConfig, TerraMindImageProcessor, read_sample  # noqa: E402
from terramind.export.onnx_export import export_onnx, quantize_int8  # noqa: E402
from terramind.modeling_terramind_tasks import TerraMindForSemanticSegmentation  # noqa: E402

SAMPLES = ROOT / "samples" / "terramesh"


def sample_batch() -> dict[str, np.ndarray]:
    """The sample tiles that have S2L2A and S1RTC, standardized, as one batch."""
    processor, batches = TerraMindImageProcessor(), []
    for path in sorted((SAMPLES / "S2L2A").glob("*.tif")):
        if (SAMPLES / "S1RTC" / path.name).is_file():
            sample = read_sample({"S2L2A": path, "S1RTC": SAMPLES / "S1RTC" / path.name})
            batches.append(processor(sample.images, band_names=sample.band_names, nodata_value=sample.nodata,
                                     return_tensors="np"))  # fmt: skip
    return {name: np.concatenate([batch[name] for batch in batches]) for name in ("S2L2A", "S1RTC")}


def tiles_per_second(run, tiles: int, repeats: int) -> float:
    run()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return tiles * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="base", help="tiny, small, base or large")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = TerraMindConfig.from_variant(args.variant, modalities=["S2L2A", "S1RTC"], num_labels=10)
    model = TerraMindForSemanticSegmentation(config).eval()
    inputs = sample_batch()
    tiles = len(inputs["S2L2A"])
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "model")
        TerraMindImageProcessor().save_pretrained(Path(tmp) / "model")
        start = time.perf_counter()
        export_onnx(Path(tmp) / "model", Path(tmp) / "onnx")
        export_seconds = time.perf_counter() - start
        fp32_path, int8_path = Path(tmp) / "onnx" / "model.onnx", Path(tmp) / "int8.onnx"
        quantize_int8(fp32_path, int8_path)
        sizes = {name: sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
                 for name, path in (("fp32", fp32_path), ("int8", int8_path))}  # fmt: skip
        sessions = {name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    for name, path in (("fp32", fp32_path), ("int8", int8_path))}  # fmt: skip
        tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
        with torch.inference_mode():
            reference = model(tensors).logits.numpy()
            eager = tiles_per_second(lambda: model(tensors), tiles, args.repeats)
        outputs = {name: session.run(None, inputs)[0] for name, session in sessions.items()}
        speeds = {name: tiles_per_second(lambda s=session: s.run(None, inputs), tiles, args.repeats)
                  for name, session in sessions.items()}  # fmt: skip
    scale = np.abs(reference).max()
    fp32_error = np.abs(outputs["fp32"] - reference).max() / scale
    int8_diff = np.abs(outputs["int8"] - outputs["fp32"]).max()
    agreement = (outputs["int8"].argmax(1) == outputs["fp32"].argmax(1)).mean()
    print(f"{args.variant} UperNet segmentation, S2L2A + S1RTC, {tiles} sample tiles of 224 x 224, "
          f"{os.cpu_count()} CPU threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"export {export_seconds:.0f} s")  # fmt: skip
    print("| runtime | size (MiB) | tiles/s | vs PyTorch | agreement with fp32 |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| PyTorch eager fp32 | {4 * sum(p.numel() for p in model.parameters()) / 2**20:.0f} | {eager:.2f} | 1.00x | "
          "reference |")  # fmt: skip
    print(f"| onnxruntime fp32 | {sizes['fp32']:.0f} | {speeds['fp32']:.2f} | {speeds['fp32'] / eager:.2f}x | "
          f"max relative difference {fp32_error:.1e} |")  # fmt: skip
    print(f"| onnxruntime int8 (dynamic) | {sizes['int8']:.0f} | {speeds['int8']:.2f} | {speeds['int8'] / eager:.2f}x "
          f"| {100 * agreement:.2f}% equal classes, max logit difference {int8_diff:.3f} "
          f"(logits up to {np.abs(outputs['fp32']).max():.2f}) |")  # fmt: skip


if __name__ == "__main__":
    main()
