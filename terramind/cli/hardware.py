"""What the machine does well: bf16 on CPUs without native bf16 instructions is emulated and slower than fp32."""

from __future__ import annotations

from transformers.utils import logging

logger = logging.get_logger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has AVX512-BF16 or AMX, the instructions torch uses for fast bf16 matmuls (True if unknown)."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [probe for probe in probes if callable(probe)]
    return not probes or any(probe() for probe in probes)


def warn_if_slow_bf16(device: str, bf16: bool) -> bool:
    """Warn (and return True) when bf16 is asked on a CPU without native bf16, where it runs several times slower
    than fp32."""
    if not bf16 or not str(device).startswith("cpu") or cpu_has_native_bf16():
        return False
    logger.warning("bf16 on this CPU is emulated (no AVX512-BF16 or AMX instructions) and runs several times slower "
                   "than fp32; use fp32 here (--dtype fp32, or no --bf16 when fine-tuning).")  # fmt: skip
    return True


__all__ = ["cpu_has_native_bf16", "warn_if_slow_bf16"]
