"""Original TerraMind checkpoints and tokenizers converted to Transformers folders, model cards, and Hub upload."""

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # Kept for compatibility: `from terramind.conversion import convert_checkpoint` named the flat module conversion.py,
    # now conversion/checkpoint.py. Lazy, so that importing a sibling (conversion.tokenizer) stays as cheap as before.
    module = importlib.import_module(".checkpoint", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
