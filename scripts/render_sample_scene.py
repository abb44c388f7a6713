"""Render the shipped TerraMesh tile (all modalities) and, optionally, generated outputs into one PNG strip.

    python scripts/render_sample_scene.py docs/sample_scene.png
    python scripts/render_sample_scene.py docs/generated.png out/generated   # adds <MODALITY>.tif from a folder
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terramind.scenes.geotiff import read_geotiff  # noqa: E402
from terramind.scenes.quicklook import render  # noqa: E402

SCENE = Path(__file__).resolve().parents[1] / "samples" / "terramesh"
TILE = "282D_485L_3_3.tif"
PANELS = (("S2L2A", "S2L2A"), ("S2RGB", "RGB"), ("S1RTC", "S1RTC"), ("DEM", "DEM"), ("NDVI", "NDVI"), ("LULC", "LULC"))


def panel(title: str, picture: np.ndarray) -> Image.Image:
    image = Image.new("RGB", (picture.shape[1], picture.shape[0] + 18), "white")
    image.paste(Image.fromarray(picture), (0, 18))
    ImageDraw.Draw(image).text((4, 3), title, fill="black")
    return image


def main(output: str, generated: str | None = None) -> None:
    panels = [panel(f"input {folder}", render(modality, read_geotiff(SCENE / folder / TILE).array))
              for folder, modality in PANELS]  # fmt: skip
    for path in sorted(Path(generated).glob("*.tif")) if generated else []:
        panels.append(panel(f"generated {path.stem}", render(path.stem, read_geotiff(path).array)))
    strip = Image.new("RGB", (sum(p.width + 4 for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        strip.paste(p, (x, 0))
        x += p.width + 4
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    strip.save(output)


if __name__ == "__main__":
    main(*sys.argv[1:])
