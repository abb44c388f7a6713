"""Generation over scenes of any size through the scene engine (`terramind generate`, `generate_tiled` on files).

Each tile goes through the model's own (untiled) `generate`; decoded images are blended across tile borders, token
grids come from the nearest tile centre (`merge="auto"`), and every finished row is turned into physical units by
the processor and written: a COG and a PNG quick-look per generated modality (Coordinates.json for a one-tile
scene), all files of a scene or none.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..modalities import MODALITIES
from .engine import STRIPE_WIDTH

QUICKLOOK_MAX_SIDE = 1024  # px: generated outputs' PNG quick-looks (the COGs have overviews for closer looks)
# GeoTIFF data type of each generated modality (physical units)
OUTPUT_DTYPES = {"S2L2A": "int16", "S2L1C": "int16", "RGB": "uint8", "DEM": "float32", "NDVI": "float32",
                 "S1GRD": "float32", "S1RTC": "float32", "LULC": "uint8"}  # fmt: skip


def band_names(name: str, count: int) -> list[str] | None:
    """The modality's band names, when the output has that many bands."""
    bands = MODALITIES[name].bands if name in MODALITIES else ()
    return list(bands) if len(bands) == count else None


def generation_step(model: Any, output_modalities: Sequence[str], generator: Any = None, decode: bool = True,
                    **options: Any) -> Any:  # fmt: skip
    """A numpy step: `model.generate` on a batch of tiles; decoded images float32, token grids as they are."""
    from .steps import TorchStep

    def run(tiles: dict) -> dict:
        out = model.generate(tiles, output_modalities=list(output_modalities), generator=generator, decode=decode,
                             **options)  # fmt: skip
        return {name: value.float() if value.is_floating_point() else value for name, value in out.items()}

    return TorchStep(run, getattr(model, "device", "cpu"))


class GeneratedFiles:
    """One scene's generated modalities, written as rows arrive: `<folder>/<MODALITY>.tif` (COG, physical units,
    nodata where no input had data) and `.png` quick-looks, `Coordinates.json` for generated coordinates; all or
    none (a context manager around the engine run)."""

    def __init__(self, folder: str | os.PathLike, outputs: Sequence[str], profile: Mapping[str, Any], processor: Any,
                 overwrite: bool = False):  # fmt: skip
        self.folder, self.profile, self.processor, self.overwrite = Path(folder), dict(profile), processor, overwrite
        self.images = [name for name in outputs if name != "Coordinates"]
        self.targets = [self.folder / f"{name}.{suffix}" for name in self.images for suffix in ("tif", "png")]
        self.targets += [self.folder / "Coordinates.json"] if "Coordinates" in outputs else []
        self.files: dict[str, Any] = {}
        self.coordinates: list[float] | None = None
        self.written: list[Path] = []
        self.ended = False

    def __enter__(self) -> GeneratedFiles:
        from .outputs import atomic_outputs

        self._atomic = atomic_outputs(self.targets, self.overwrite)
        self.partial = self._atomic.__enter__()
        return self

    def write_rows(self, top: int, values: Mapping[str, np.ndarray], nodata: np.ndarray) -> None:
        self.write_block(top, 0, values, nodata)

    def write_block(self, top: int, left: int, values: Mapping[str, np.ndarray], nodata: np.ndarray) -> None:
        import torch

        from .outputs import NODATA_VALUES
        from .writers import GeoTiffRows

        present = {name: values[name] for name in self.images if name in values}
        if not present:
            return
        physical = self.processor.post_process_generation(
            {name: torch.from_numpy(np.ascontiguousarray(value))[None] for name, value in present.items()})
        for name in present:
            rows = physical[name][0].float().numpy()
            rows[:, nodata] = math.nan  # pixels without input data: nodata, not made-up values
            if name not in self.files:
                dtype = OUTPUT_DTYPES.get(name, "float32")
                self.files[name] = GeoTiffRows(self.partial[self.folder / f"{name}.tif"], self.profile, rows.shape[0],
                                               dtype, NODATA_VALUES[dtype], band_names=band_names(name, rows.shape[0]),
                                               resampling="nearest" if name == "LULC" else "average")  # fmt: skip
            self.files[name].write(top, rows, left=left)

    def add_tiles(self, boxes: list, values: Mapping[str, np.ndarray] | None, nodata: list) -> None:
        if values is not None and "Coordinates" in values:
            self.coordinates = [float(v) for v in values["Coordinates"][0]]

    def close(self) -> None:
        """Finish the files (COGs), draw the quick-looks from them and put everything in place."""
        from .quicklook import save_quicklook

        try:
            for name, file in self.files.items():
                file.finish()
                save_quicklook(self.partial[self.folder / f"{name}.png"], name,
                               read_decimated(self.partial[self.folder / f"{name}.tif"]))  # fmt: skip
            if self.coordinates is not None:
                lon, lat = self.coordinates
                self.partial[self.folder / "Coordinates.json"].write_text(json.dumps({"lon": lon, "lat": lat}))
        except BaseException as error:
            self.discard(error)
            raise
        self.ended = True
        self._atomic.__exit__(None, None, None)
        self.written = list(self.targets)

    def discard(self, error: BaseException | None = None) -> None:
        """Remove what was written of this scene (once)."""
        if self.ended:
            return
        self.ended = True
        for file in self.files.values():
            file.discard()
        error = error or RuntimeError("discarded")
        self._atomic.__exit__(type(error), error, None)


def read_decimated(path: str | os.PathLike, max_side: int = QUICKLOOK_MAX_SIDE) -> np.ndarray:
    """(C, h, w) float32 values of a raster (NaN for nodata), decimated (nearest) when a side exceeds `max_side`:
    every band is read, so the side is capped low enough that a 12-band output's quick-look does not grow the run's
    memory with the scene (12 x 1024 x 1024 float32: 50 MB)."""
    import rasterio

    from .writers import decimated_shape

    with rasterio.open(path) as src:
        shape = (src.count, *decimated_shape(src, max_side))
        return src.read(out_shape=shape, masked=True).astype(np.float32).filled(np.nan)


def generate_scenes(model: Any, scenes: Sequence[Any], folders: Sequence[str | os.PathLike], outputs: Sequence[str],
                    processor: Any, tile_size: int = 224, overlap: int = 64, batch_size: int = 8,
                    generator: Any = None, overwrite: bool = False, num_workers: int = 1, progress: bool = True,
                    stripe_width: int | None = STRIPE_WIDTH, **options: Any) -> Any:  # fmt: skip
    """Generate `outputs` for scenes of any size ({modality: path or open dataset} each, `.paths` of a `Scene`)
    into `folders` (one per scene), streaming. Tiles of `tile_size` (of a smaller scene's shorter side) overlap by
    `overlap`; batches span scenes, so one-tile scenes are generated `batch_size` at a time. `processor` (with
    `do_pad=True`, `size_divisor=16` and any offsets) standardizes the inputs and destandardizes the outputs. Scenes
    wider than `stripe_width` go in vertical stripes (tiles on a stripe border are generated in both; None: whole
    rows, memory growing with the width). Yields each scene's `SceneRun` and written files, in order."""
    from .engine import SceneJob, SceneSource, run_scenes
    from .steps import ProcessorPrepare

    jobs = []
    for scene, folder in zip(scenes, folders, strict=True):
        paths, name = getattr(scene, "paths", scene), f"scene {getattr(scene, 'id', '')}".strip()
        files = GeneratedFiles(folder, outputs, {}, processor, overwrite)

        def setup(source: SceneSource, files: GeneratedFiles = files) -> ProcessorPrepare:
            if "Coordinates" in outputs:
                side = min(-(-source.height // 16) * 16, -(-source.width // 16) * 16, tile_size)
                if source.height > side or source.width > side:
                    raise ValueError("Coordinates are generated for one tile; the scene is larger than one tile "
                                     "(--tile-size).")  # fmt: skip
            files.profile = dict(source.profile)
            files.__enter__()
            return ProcessorPrepare(processor, source.band_names, source.nodata, combine="all")

        jobs.append(SceneJob(lambda paths=paths: SceneSource(paths), None, files, name, setup))
    step = generation_step(model, outputs, generator, **options)
    try:
        runs = run_scenes(jobs, step, tile_size=tile_size, overlap=overlap, batch_size=batch_size, multiple_of=16,
                          merge="auto", shrink=True, nodata_pooling="all", num_workers=num_workers,
                          progress=progress, description="generating tiles", stripe_width=stripe_width)  # fmt: skip
        for job, run in zip(jobs, runs, strict=False):
            run.outputs = job.output.written
            yield run
    except BaseException as error:
        for job in jobs:
            if hasattr(job.output, "_atomic"):
                job.output.discard(error)
        raise
    finally:
        for job in jobs:
            if isinstance(job.source, SceneSource):
                job.source.close()


__all__ = ["OUTPUT_DTYPES", "QUICKLOOK_MAX_SIDE", "GeneratedFiles", "band_names", "generate_scenes", "generation_step", "read_decimated"]
