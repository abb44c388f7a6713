"""Trim the golden fixtures of the original (../shared/reference/fixtures) into tests/fixtures.

Keeps only the embeddings the parity tests use, so that the suite runs on a fresh clone. Maintainers run this
once after the reference fixtures change: `python scripts/make_test_fixtures.py ../shared/reference/fixtures`.
"""

import shutil
import sys
from pathlib import Path

import torch

COORDS_ROWS = 2400  # the test vocabulary (tests/fixtures/coords_vocab.json) uses ids below this
KEEP_TOKEN_EMBEDDINGS = {
    "encoder_embeddings": ("tok_lulc@224", "tok_dem@224"),  # TiM input, chained generation input
    "decoder_embeddings": ("tok_lulc@224", "tok_sen1grd@224", "tok_dem@224", "tok_ndvi@224"),
}


def keep(key: str, arch: str = "tiny") -> bool:
    side, _, rest = key.partition(".")
    if side not in KEEP_TOKEN_EMBEDDINGS:
        return True
    modality = rest.split(".")[0]
    if modality.startswith("untok_"):
        return True
    if key.endswith(".to_logits.weight"):
        return False  # tied to token_emb in the released files
    if key.endswith(".mod_emb") and modality in KEEP_TOKEN_EMBEDDINGS["decoder_embeddings"]:
        return True  # shared by encoder and decoder
    if side == "encoder_embeddings" and modality == "coords":
        return True  # token table trimmed to the rows the test vocabulary uses (tests pad it back)
    if side == "decoder_embeddings" and modality == "coords":
        return arch == "tiny"  # the coordinates generation case (logits over the whole vocabulary)
    return modality in KEEP_TOKEN_EMBEDDINGS[side]


def main(source: str, target: str = "tests/fixtures") -> None:
    source_dir, target_dir = Path(source), Path(target)
    target_dir.mkdir(parents=True, exist_ok=True)
    for arch in ("tiny", "base"):
        state = torch.load(source_dir / f"terramind_{arch}_original.pt", weights_only=True)
        kept = {k: v.clone() for k, v in state.items() if keep(k, arch)}
        kept["encoder_embeddings.coords.token_emb.weight"] = kept["encoder_embeddings.coords.token_emb.weight"][
            :COORDS_ROWS
        ].clone()
        torch.save(kept, target_dir / f"terramind_{arch}_original.pt")
        shutil.copy(source_dir / f"terramind_{arch}_cases.pt", target_dir)
    shutil.copy(source_dir / "manifest.json", target_dir)


if __name__ == "__main__":
    main(*sys.argv[1:])
