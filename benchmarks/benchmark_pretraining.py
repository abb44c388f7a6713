"""Time and memory per step of `terramind pretrain` for a TerraMind architecture on this machine.

    python scripts/benchmark_pretraining.py --variant base --steps 6 --batch-size 2 [--optim adamw_torch]

A randomly initialised generator of the architecture (S2L2A, S1RTC, DEM inputs; S1RTC and LULC targets), tiny
random tokenizers (tokenizing is done once, before training, and not timed) and the sample tiles of
samples/terramesh, 224 x 224. Prints seconds per step (the first step left out) and the process's peak memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def main() -> None:
    from conftest import mini_tokenizer
    from transformers import TrainingArguments

    from terramind import TerraMindConfig, TerraMindForGeneration
    from terramind.training import pretraining

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="base")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--optim", default="adamw_torch")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        mini_tokenizer("LULC").save_pretrained(folder / "lulc")
        mini_tokenizer("S1RTC").save_pretrained(folder / "s1rtc")
        config = TerraMindConfig.from_variant(options.variant, tokenizer_paths={"LULC": str(folder / "lulc"),
                                                                                "S1RTC": str(folder / "s1rtc")})
        model = TerraMindForGeneration(config, modalities=["S2L2A", "S1RTC", "DEM", "LULC", "S1RTC_TOKENS"])
        print(f"TerraMind-{options.variant} generator: {model.num_parameters() / 1e6:.0f}M parameters")
        args = pretraining.PretrainingArguments(
            data_root=str(ROOT / "samples" / "terramesh"), input_modalities=["S2L2A", "S1RTC", "DEM"],
            target_modalities=["S1RTC", "LULC"], model_name_or_path="unused", cache_dir=str(folder / "cache"))
        training = TrainingArguments(str(folder / "run"), max_steps=options.steps, report_to="none", use_cpu=not torch.cuda.is_available(),
                                     per_device_train_batch_size=options.batch_size, save_strategy="no",
                                     logging_steps=1, optim=options.optim, disable_tqdm=True,
                                     gradient_checkpointing=options.gradient_checkpointing)
        timer = StepTimer()
        original = pretraining.PretrainingTrainer.__init__

        def with_timer(self, *a, **k):
            original(self, *a, **k)
            self.add_callback(timer)

        pretraining.PretrainingTrainer.__init__ = with_timer
        start = time.perf_counter()
        pretraining.pretrain(args, training, model=model)
        steps = [b - a for a, b in zip(timer.times, timer.times[1:], strict=False)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"{torch.get_num_threads()} threads, batch {options.batch_size}, optim {options.optim}: "
          f"{sum(steps) / len(steps):.2f} s/step (steps 2..{options.steps}), peak memory {peak:.2f} GB, "
          f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
