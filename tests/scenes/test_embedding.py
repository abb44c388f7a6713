"""`terramind embed` over many scenes: pairing, the tile loader, GeoTIFF folders, GeoParquet, resume, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from conftest import fixture_checkpoint
from rasterio.warp import transform as reproject

from terramind.cli import main
from terramind.conversion.checkpoint import convert_checkpoint
from terramind.scenes import find_scenes

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "terramesh"
SCENES = sorted(path.stem for path in (SAMPLES / "S2L2A").glob("*.tif"))  # 3 scenes of 224 x 224 pixels
TILE = 64  # 224 px: tiles at 0, 64, 128 and 160 (flush), 16 per scene


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("embedding_model")
    convert_checkpoint(fixture_checkpoint("tiny", root), root / "model", config_overrides={"num_attention_heads": 2})
    return str(root / "model")


def embed(model: str, output: Path, *extra: str, s2: str | Path = SAMPLES / "S2L2A",
          s1: str | Path = SAMPLES / "S1RTC") -> int:  # fmt: skip
    return main(["embed", "--model", model, "--input", f"S2L2A={s2}", "--input", f"S1RTC={s1}", "--output",
                 str(output), "--tile-size", str(TILE), "--no-progress", *extra])  # fmt: skip


def single_scene_grid(model: str, tmp_path: Path, scene: str) -> np.ndarray:
    """The (D, 14, 14) embeddings of one scene, embedded alone into one GeoTIFF."""
    out = tmp_path / f"single_{scene}.tif"
    assert embed(model, out, s2=SAMPLES / "S2L2A" / f"{scene}.tif", s1=SAMPLES / "S1RTC" / f"{scene}.tif") == 0
    with rasterio.open(out) as src:
        return src.read()


def rows(folder: Path):
    return pq.read_table(folder).sort_by([("scene", "ascending"), ("row", "ascending"), ("col", "ascending")])


def embeddings(table) -> np.ndarray:
    return np.stack(table["embedding"].to_numpy(zero_copy_only=False))


# ----------------------------------------------------------------------------- finding scenes
def test_scenes_are_paired_by_file_name(tmp_path):
    scenes = find_scenes({"S2L2A": str(SAMPLES / "S2L2A"), "S1RTC": str(SAMPLES / "S1RTC" / "*.tif")})
    assert [scene.id for scene in scenes] == SCENES
    assert all(Path(s.paths["S2L2A"]).name == Path(s.paths["S1RTC"]).name == f"{s.id}.tif" for s in scenes)
    # a glob's '*' gives the id: a_S2.tif pairs with a_S1.tif
    for modality, suffix in (("S2L2A", "S2"), ("S1RTC", "S1")):
        (tmp_path / f"{SCENES[0]}_{suffix}.tif").symlink_to(SAMPLES / modality / f"{SCENES[0]}.tif")
    paired = find_scenes({"S2L2A": str(tmp_path / "*_S2.tif"), "S1RTC": str(tmp_path / "*_S1.tif")})
    assert [(s.id, sorted(s.paths)) for s in paired] == [(SCENES[0], ["S1RTC", "S2L2A"])]
    # one file per modality is one scene, whatever the names
    single = find_scenes(
        {"S2L2A": str(tmp_path / f"{SCENES[0]}_S2.tif"), "S1RTC": str(tmp_path / f"{SCENES[0]}_S1.tif")}
    )
    assert len(single) == 1 and single[0].id == f"{SCENES[0]}_S2"
    with pytest.raises(ValueError, match=r"S1RTC=.* has no file for 2 of 3 scenes \(433D_629L_3_1, 637U_59R_1_3\)"):
        find_scenes({"S2L2A": str(SAMPLES / "S2L2A"), "S1RTC": str(tmp_path / "*_S1.tif")})
    with pytest.raises(ValueError, match="does not exist"):
        find_scenes({"S2L2A": str(tmp_path / "nothing")})


# ----------------------------------------------------------------------------- GeoTIFF per scene
def test_folder_of_geotiffs_equals_one_scene_runs(model, tmp_path):
    out = tmp_path / "embeddings"
    assert embed(model, out, "--num-workers", "2", "--batch-size", "5") == 0  # batches of 5 span scenes
    assert sorted(p.name for p in out.glob("*.tif")) == [f"{scene}.tif" for scene in SCENES]
    for scene in SCENES:
        with rasterio.open(out / f"{scene}.tif") as src, rasterio.open(SAMPLES / "S2L2A" / f"{scene}.tif") as ref:
            values = src.read()
            assert src.crs == ref.crs and np.isclose(src.transform.a, ref.transform.a * 16)
        np.testing.assert_allclose(values, single_scene_grid(model, tmp_path, scene), rtol=1e-4, atol=1e-5)
    manifest = [json.loads(line) for line in (out / "_manifest-r00000.jsonl").read_text().splitlines()]
    assert sorted(entry["scene"] for entry in manifest) == SCENES
    assert json.loads((out / "_run.json").read_text())["modalities"] == ["S1RTC", "S2L2A"]
    assert embed(model, tmp_path / "one.tif") == 2  # three scenes do not go into one file


# ----------------------------------------------------------------------------- GeoParquet
def test_geoparquet_schema_geometry_and_values(model, tmp_path):
    out = tmp_path / "emb.parquet"
    assert embed(model, out) == 0
    table = rows(out)
    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    assert schema.field("embedding").type.list_size == 16 and str(schema.field("embedding").type.value_type) == "float"
    assert [f.name for f in schema] == ["scene", "row", "col", "crs", "geometry", "modalities", "source_files",
                                        "model", "embedding"]  # fmt: skip
    geo = json.loads(schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB" and geo["columns"]["geometry"]["crs"]["id"] == \
        {"authority": "OGC", "code": "CRS84"}  # fmt: skip
    assert table.num_rows == 3 * 16 and sorted(set(table["scene"].to_pylist())) == SCENES
    first = table.slice(0, 16)
    assert first["modalities"][0].as_py() == ["S2L2A", "S1RTC"] and first["model"][0].as_py() == model
    assert first["source_files"][0].as_py() == [str(SAMPLES / m / f"{SCENES[0]}.tif") for m in ("S2L2A", "S1RTC")]
    starts = [0, 64, 128, 160]
    assert list(zip(first["row"].to_pylist(), first["col"].to_pylist(), strict=True)) == \
        [(r, c) for r in starts for c in starts]  # fmt: skip
    # the geometries, back in the scene's pixel coordinates, are the tiles
    with rasterio.open(SAMPLES / "S2L2A" / f"{SCENES[0]}.tif") as src:
        crs, inverse = src.crs, ~src.transform
    assert first["crs"][0].as_py() == crs.to_string()
    for polygon, top, left in zip(shapely.from_wkb(first["geometry"].to_numpy(zero_copy_only=False)),
                                  first["row"].to_pylist(), first["col"].to_pylist(), strict=True):  # fmt: skip
        lon, lat = np.asarray(polygon.exterior.coords).T
        x, y = reproject("EPSG:4326", crs, lon, lat)
        a, b, c, d, e, f = tuple(inverse)[:6]
        cols, rows_ = a * np.asarray(x) + b * np.asarray(y) + c, d * np.asarray(x) + e * np.asarray(y) + f
        np.testing.assert_allclose(cols, [left, left + 64, left + 64, left, left], atol=1e-3)
        np.testing.assert_allclose(rows_, [top, top, top + 64, top + 64, top], atol=1e-3)
    # a tile's embedding is the mean of its patches in the GeoTIFF output
    grid = single_scene_grid(model, tmp_path, SCENES[0])
    tile = embeddings(first)[first["row"].to_pylist().index(64) + 1]  # row 64, col 64
    np.testing.assert_allclose(tile, grid[:, 4:8, 4:8].mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def test_geoparquet_per_patch_and_merge(model, tmp_path):
    from terramind.geoparquet import merge_parts

    out = tmp_path / "patches.parquet"
    assert embed(model, out, "--per-patch") == 0
    table = rows(out)
    assert table.num_rows == 3 * 14 * 14
    first = table.filter(table["scene"].to_numpy(zero_copy_only=False) == SCENES[0])
    grid = single_scene_grid(model, tmp_path, SCENES[0])
    np.testing.assert_allclose(embeddings(first), grid.reshape(16, -1).T, rtol=1e-4, atol=1e-5)
    assert sorted(set(first["row"].to_pylist())) == list(range(0, 224, 16))
    merged = merge_parts(out, tmp_path / "merged.parquet")
    assert pq.read_table(merged).num_rows == table.num_rows
    assert pq.read_schema(merged).metadata[b"geo"] == pq.read_schema(next(out.glob("part-*"))).metadata[b"geo"]


def test_per_patch_and_resume_need_the_right_outputs(model, tmp_path, capsys):
    assert embed(model, tmp_path / "e.tif", "--per-patch") == 2
    assert "--per-patch is for GeoParquet outputs" in capsys.readouterr().err
    assert embed(model, tmp_path / "e.txt") == 2
    assert "--output must end in" in capsys.readouterr().err


# ----------------------------------------------------------------------------- resume
def link_scenes(folder: Path, scenes: list[str]) -> None:
    for modality in ("S2L2A", "S1RTC"):
        (folder / modality).mkdir(parents=True, exist_ok=True)
        for scene in scenes:
            (folder / modality / f"{scene}.tif").symlink_to(SAMPLES / modality / f"{scene}.tif")


@pytest.mark.parametrize("output", ["embeddings", "emb.parquet"])
def test_resume_skips_finished_scenes(model, tmp_path, capsys, output):
    data, out = tmp_path / "data", tmp_path / output
    link_scenes(data, SCENES[:2])  # a first run sees two scenes
    assert embed(model, out, s2=data / "S2L2A", s1=data / "S1RTC") == 0
    first_files = {path: path.stat().st_mtime_ns for path in out.iterdir() if not path.name.startswith("_")}
    link_scenes(data, SCENES[2:])
    capsys.readouterr()
    assert embed(model, out, s2=data / "S2L2A", s1=data / "S1RTC") == 2  # never over an earlier run unasked
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert embed(model, out, "--resume", "--merge-method", "max", s2=data / "S2L2A", s1=data / "S1RTC") == 2
    assert "merge_method: 'mean' then, 'max' now" in capsys.readouterr().err
    assert embed(model, out, "--resume", s2=data / "S2L2A", s1=data / "S1RTC") == 0
    assert "Embedded 1 scene, skipped 2 finished" in capsys.readouterr().out
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in first_files.items())  # untouched
    if output.endswith(".parquet"):
        fresh = tmp_path / "fresh.parquet"
        assert embed(model, fresh) == 0
        resumed, reference = rows(out), rows(fresh)
        assert resumed.drop(["embedding", "source_files"]).equals(reference.drop(["embedding", "source_files"]))
        np.testing.assert_allclose(embeddings(resumed), embeddings(reference), rtol=1e-4, atol=1e-5)
    else:
        assert sorted(p.name for p in out.glob("*.tif")) == [f"{scene}.tif" for scene in SCENES]
    assert embed(model, out, "--resume", s2=data / "S2L2A", s1=data / "S1RTC") == 0
    assert "Every scene of this process (3) is finished" in capsys.readouterr().out
    assert embed(model, out, "--overwrite", s2=data / "S2L2A", s1=data / "S1RTC") == 0
    assert "Embedded 3 scenes into" in capsys.readouterr().out


def test_a_folder_of_other_files_is_never_written(model, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert embed(model, out, "--overwrite") == 2
    assert "is a folder of other files" in capsys.readouterr().err and (out / "notes.txt").read_text() == "keep"


# ----------------------------------------------------------------------------- processes
@pytest.mark.slow
def test_two_processes_give_the_rows_of_one(model, tmp_path):
    """`accelerate launch` with two CPU processes (gloo): each rank embeds its share; the union is a one-process run."""
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert embed(model, one, "--per-patch") == 0
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "terramind.cli",
               "embed", "--model", model, "--input", f"S2L2A={SAMPLES / 'S2L2A'}", "--input",
               f"S1RTC={SAMPLES / 'S1RTC'}", "--output", str(two), "--tile-size", str(TILE), "--per-patch",
               "--no-progress", "--num-workers", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[rank 0/2] Embedded 2 scenes" in result.stdout and "[rank 1/2] Embedded 1 scene" in result.stdout
    assert len(list(two.glob("part-r00000-*.parquet"))) == len(list(two.glob("part-r00001-*.parquet"))) == 1
    a, b = rows(one), rows(two)
    assert a.drop(["embedding"]).equals(b.drop(["embedding"]))
    np.testing.assert_allclose(embeddings(a), embeddings(b), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- generation over many scenes
@pytest.fixture(scope="module")
def lulc_tokenizer(tmp_path_factory) -> str:
    from conftest import mini_tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "LULC"
    mini_tokenizer("LULC").save_pretrained(path)
    return str(path)


def generate(model: str, tokenizer: str, output: Path, *extra: str, s1: str | Path = SAMPLES / "S1RTC") -> int:
    return main(["generate", "--model", model, "--input", f"S1RTC={s1}", "--output-modalities", "LULC",
                 "--tokenizer", f"LULC={tokenizer}", "--output-dir", str(output), "--temperature", "0",
                 "--no-progress", *extra])  # fmt: skip


def test_generate_many_scenes_in_batches_across_scenes(model, lulc_tokenizer, tmp_path, capsys):
    """Greedy LULC of three one-tile scenes, generated two at a time across scenes, equals one scene per run."""
    out = tmp_path / "generated"
    assert generate(model, lulc_tokenizer, out, "--batch-size", "2", "--num-workers", "2") == 0
    assert "Generated 3 scenes into" in capsys.readouterr().out
    for scene in SCENES:
        assert sorted(p.name for p in (out / scene).iterdir()) == ["LULC.png", "LULC.tif"]
        single = tmp_path / f"single_{scene}"
        assert generate(model, lulc_tokenizer, single, s1=SAMPLES / "S1RTC" / f"{scene}.tif") == 0
        with rasterio.open(out / scene / "LULC.tif") as many, rasterio.open(single / "LULC.tif") as one:
            assert many.crs == one.crs and many.transform == one.transform
            assert np.array_equal(many.read(), one.read())
    (out / SCENES[1] / "LULC.tif").unlink()  # a lost output is generated again on resume, the others are skipped
    assert generate(model, lulc_tokenizer, out, "--resume") == 0
    assert "Generated 1 scene, skipped 2 finished" in capsys.readouterr().out


def test_compile_is_applied(model, lulc_tokenizer, tmp_path, monkeypatch):
    """--compile goes through torch.compile (embed) and nn.Module.compile (generate); compiling for real takes a
    minute on a CPU, so the compiler is replaced by a recorder here (compiled outputs match eager ones to 4e-7)."""
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled.append(type(module).__name__) or module)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compiled.append(type(self).__name__))
    assert embed(model, tmp_path / "e.tif", "--compile", s2=SAMPLES / "S2L2A" / f"{SCENES[0]}.tif",
                 s1=SAMPLES / "S1RTC" / f"{SCENES[0]}.tif") == 0  # fmt: skip
    assert compiled == ["TerraMindModel"]
    assert generate(model, lulc_tokenizer, tmp_path / "g", "--compile", s1=SAMPLES / "S1RTC" / f"{SCENES[0]}.tif") == 0
    assert compiled[1:] == ["TerraMindEncoder", "TerraMindDecoder", "TerraMindTokenizerViTDecoder"]


@pytest.mark.parametrize("output", ["embeddings", "emb.parquet"])
def test_a_bad_scene_stops_the_run_in_one_line_and_resume_finishes_it(model, tmp_path, capsys, output):
    data, out = tmp_path / "data", tmp_path / output
    link_scenes(data, SCENES)
    bad = data / "S2L2A" / f"{SCENES[2]}.tif"
    bad.unlink()
    bad.write_text("not a GeoTIFF")
    assert embed(model, out, "--num-workers", "0", s2=data / "S2L2A", s1=data / "S1RTC") == 2
    error = capsys.readouterr().err.strip()
    assert f"scene {SCENES[2]}:" in error and "not a readable GeoTIFF" in error and "\n" not in error
    assert not [path for path in out.iterdir() if ".partial-" in path.name]  # nothing half-written is left
    finished = 2 if output == "embeddings" else 0  # GeoTIFFs are committed per scene, a part file when it closes
    manifest = out / "_manifest-r00000.jsonl"
    assert (len(manifest.read_text().splitlines()) if manifest.exists() else 0) == finished
    bad.unlink()
    bad.symlink_to(SAMPLES / "S2L2A" / f"{SCENES[2]}.tif")
    assert embed(model, out, "--resume", s2=data / "S2L2A", s1=data / "S1RTC") == 0
    assert f"Embedded {3 - finished} scene" in capsys.readouterr().out
    if output.endswith(".parquet"):
        assert rows(out).num_rows == 3 * 16
