"""Where the samples of a fine-tuning dataset are: the folders of the modalities and labels (TerraMind's layout, a
subfolder per modality, or TerraTorch's, images and labels in one folder told apart by file patterns), split files,
and each sample's paths. The files of a folder are indexed by `scenes.discovery.index_folder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MAX_LISTED = 5


def read_split(split: str | Path | Sequence[str]) -> list[str]:
    """Sample ids of a split: a text file with one id per line (file names allowed), or a list of ids."""
    if isinstance(split, (str, Path)):
        path = Path(split)
        if not path.is_file():
            raise ValueError(f"Split file {path} does not exist.")
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        ids = [str(s) for s in split]
    ids = [Path(i).name.removesuffix(".tif").removesuffix(".tiff") if i.endswith((".tif", ".tiff")) else i
           for i in ids]  # fmt: skip
    if not ids:
        raise ValueError(f"Split {split} names no samples.")
    return list(dict.fromkeys(ids))


def _per_key(value: str | Mapping[str, str], key: str, default: str) -> str:
    if isinstance(value, Mapping):
        return value.get(key, default)
    return value


def _modality_folders(
    data_root: str | Path | None, modalities: Sequence[str] | Mapping[str, str | Path]
) -> dict[str, Path]:
    """Modality name -> folder: `data_root/<name>`, or the given folders (relative ones under `data_root`)."""
    if isinstance(modalities, str):
        modalities = [modalities]
    if isinstance(modalities, Mapping):
        folders = {name: Path(folder) for name, folder in modalities.items()}
        if data_root is not None:
            folders = {n: f if f.is_absolute() else Path(data_root) / f for n, f in folders.items()}
    elif data_root is None:
        raise ValueError("Give `data_root` (with one folder per modality) or `modalities` as {name: folder}.")
    else:
        folders = {name: Path(data_root) / name for name in modalities}
    if not folders:
        raise ValueError("`modalities` must name at least one modality.")
    return folders


def find_layout(
    data_root: str | Path | None,
    modalities: Sequence[str] | Mapping[str, str | Path],
    label_dir: str | Path | None,
    needs_labels: bool = True,
) -> tuple[dict[str, Path], Path | None]:
    """Folders of the modalities and of the labels, in either layout.

    TerraMind's layout has a subfolder per modality (`data_root/S2L2A`) and a label folder. TerraTorch's (its
    GenericNonGeoSegmentationDataModule datasets, e.g. HLS burn scars) keeps images and labels side by side in one
    folder, told apart by their file-name patterns (`image_grep="*_merged.tif"`, `label_grep="*.mask.tif"`): a
    modality without a subfolder, and no `label_dir`, mean `data_root` itself.
    """
    if isinstance(modalities, str):
        modalities = [modalities]
    if data_root is not None and not isinstance(modalities, Mapping):
        root = Path(data_root)
        folders = {name: root / name if (root / name).is_dir() else root for name in modalities}
        if not folders:
            raise ValueError("`modalities` must name at least one modality.")
    else:
        folders = _modality_folders(data_root, modalities)
    label_path = None
    if needs_labels:
        if label_dir is None:
            label_path = Path(data_root) if data_root is not None else None
        else:
            label_path = Path(label_dir)
            if data_root is not None and not label_path.is_absolute() and not label_path.is_dir():
                label_path = Path(data_root) / label_path
    return folders, label_path


def _sample_paths(steps: Mapping[str, list[dict[str, Path]]], patterns: Mapping[str, Any], sample: str) -> dict:
    """{modality: path} of a sample; {modality: [path per time step]} where its pattern is a list."""
    return {name: str(indexed[0][sample]) if isinstance(patterns[name], str) else
            [str(found[sample]) for found in indexed] for name, indexed in steps.items()}  # fmt: skip


def _flat_paths(paths: Mapping[str, str | list[str]]) -> dict[str, str]:
    """{modality: path}, time steps as entries "S2L2A[t]" of their own."""
    flat = {}
    for name, value in paths.items():
        for step, path in enumerate([value] if isinstance(value, str) else value):
            flat[name if isinstance(value, str) else f"{name}[{step}]"] = path
    return flat


def _check_patterns_apart(steps: Mapping[str, list[dict[str, Path]]], label_files: Mapping[str, Path],
                          patterns: Mapping[str, Any], label_grep: str) -> None:  # fmt: skip
    """In one folder, an image pattern must not match the label files (TerraTorch's `*_merged.tif` vs `*.mask.tif`)."""
    labels = set(label_files.values())
    for name, indexed in steps.items():
        shared = sorted(path.name for found in indexed for path in found.values() if path in labels)
        if shared:
            raise ValueError(f"image_grep {patterns[name]!r} of {name} and label_grep {label_grep!r} both match "
                             f"{shared[:MAX_LISTED]}; give patterns that tell images and labels apart, e.g. "
                             f"image_grep='*_merged.tif', label_grep='*.mask.tif'.")  # fmt: skip


def _split_sample_ids(ids: list[str], steps: Mapping[str, list[dict[str, Path]]]) -> list[str]:
    """Split entries as sample ids: ids as they are, or file names (with or without extension) of the images."""
    by_file = {}
    for indexed in steps.values():
        for found in indexed:
            for sample, path in found.items():
                by_file.setdefault(path.name, sample)
                by_file.setdefault(path.name.removesuffix(".tif").removesuffix(".tiff"), sample)
    known = set().union(*(found for indexed in steps.values() for found in indexed))
    return list(dict.fromkeys(i if i in known else by_file.get(i, i) for i in ids))
