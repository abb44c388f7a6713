"""Convert original TerraMind releases (terratorch state dicts) into Transformers folders.

    python scripts/convert_terramind_original_to_hf.py --checkpoint TerraMind_v1_base.pt --variant base --output DIR
    python scripts/convert_terramind_original_to_hf.py --tokenizer-checkpoint TerraMind_Tokenizer_S2L2A.pt \
        --modality S2L2A --output DIR

Thin entry point over `terramind.cli` (`terramind convert` takes the same arguments).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terramind.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
