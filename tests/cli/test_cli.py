"""The `terramind` command line on the shipped sample scene, with tiny converted models."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import SAMPLES, fixture_checkpoint, mini_tokenizer, sample_tile
from PIL import Image

from terramind.cli import main
from terramind.conversion.checkpoint import convert_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_assets")
    convert_checkpoint(fixture_checkpoint("tiny", root), root / "model", config_overrides={"num_attention_heads": 2})
    for modality in ("S2L2A", "LULC", "DEM", "S1GRD"):
        mini_tokenizer(modality).save_pretrained(root / f"tokenizer_{modality}")
    return {"model": root / "model", **{m: root / f"tokenizer_{m}" for m in ("S2L2A", "LULC", "DEM", "S1GRD")}}


def cli(*argv, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`terramind ARGV` in a fresh interpreter, offline."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "terramind.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=environment)  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess, message: str) -> bool:
    err = result.stderr.strip()
    return result.returncode == 2 and message in err and "\n" not in err and "Traceback" not in err


def test_embed_geotiff_and_safetensors(assets, tmp_path):
    out = tmp_path / "emb.tif"
    assert main(["embed", "--model", str(assets["model"]), "--input", f"S2L2A={sample_tile('S2L2A')}",
                 "--input", f"S1RTC={sample_tile('S1RTC')}", "--output", str(out), "--no-progress"]) == 0  # fmt: skip
    with rasterio.open(sample_tile("S2L2A")) as src, rasterio.open(out) as emb:
        assert (emb.count, emb.height, emb.width) == (16, 14, 14)
        assert emb.crs == src.crs
        assert np.allclose(emb.transform.a, src.transform.a * 16) and emb.transform.c == src.transform.c
        assert np.isfinite(emb.read()).all()
    from safetensors import safe_open

    out = tmp_path / "emb.safetensors"
    assert main(["embed", "--model", str(assets["model"]), "--input", f"S2L2A={sample_tile('S2L2A')}", "--output",
                 str(out), "--merge-method", "concat", "--no-progress"]) == 0  # fmt: skip
    with safe_open(out, "pt") as handle, rasterio.open(sample_tile("S2L2A")) as src:
        assert handle.get_tensor("embeddings").shape == (16, 14, 14)  # concat of the one configured modality
        assert handle.metadata()["modalities"] == "S2L2A" and handle.metadata()["nodata"] == "nan"
        transform = json.loads(handle.metadata()["transform"])  # the 160 m grid of the embeddings, not the 10 m input
        assert transform == [src.transform.a * 16, 0.0, src.transform.c, 0.0, src.transform.e * 16, src.transform.f]


def test_generate_geotiffs_and_quicklooks(assets, tmp_path):
    code = main(["generate", "--model", str(assets["model"]), "--input", f"S1RTC={sample_tile('S1RTC')}",
                 "--output-modalities", "S2L2A,LULC", "--output-dir", str(tmp_path), "--timesteps", "2",
                 "--tokenizer", f"S2L2A={assets['S2L2A']}", "--tokenizer", f"LULC={assets['LULC']}",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    with rasterio.open(sample_tile("S1RTC")) as src:
        for name, count, dtype in (("S2L2A", 12, "int16"), ("LULC", 1, "uint8")):
            with rasterio.open(tmp_path / f"{name}.tif") as out:
                assert (out.count, out.height, out.width, out.dtypes[0]) == (count, 224, 224, dtype)
                assert out.crs == src.crs and out.transform == src.transform
            with Image.open(tmp_path / f"{name}.png") as png:
                assert png.size == (224, 224) and png.mode == "RGB"


def test_generate_offset_shifts_the_statistics(assets, tmp_path, capsys):
    """--offset S2L2A=1000 (harmonised L2A): generated S2L2A comes back 1000 higher, the same samples otherwise."""
    outputs = {}
    for name, extra in (("plain", []), ("offset", ["--offset", "S2L2A=1000"])):
        assert main(["generate", "--model", str(assets["model"]), "--input", f"S1RTC={sample_tile('S1RTC')}",
                     "--output-modalities", "S2L2A", "--output-dir", str(tmp_path / name), "--timesteps", "1",
                     "--tokenizer", f"S2L2A={assets['S2L2A']}", "--no-progress", *extra]) == 0  # fmt: skip
        with rasterio.open(tmp_path / name / "S2L2A.tif") as out:
            outputs[name] = out.read().astype(np.int32)
    assert np.abs(outputs["offset"] - outputs["plain"] - 1000).max() <= 1
    argv = ["generate", "--input", f"S2L2A={sample_tile('S2L2A')}", "--output-modalities", "LULC", "--output-dir", "o"]
    assert main([*argv, "--offset", "S2L2A=much"]) == 2
    assert "--offset takes MODALITY=NUMBER" in capsys.readouterr().err


def test_generate_tiles_a_larger_scene(assets, tmp_path):
    with rasterio.open(sample_tile("S2L2A")) as src:
        data, profile = src.read(), src.profile
    big = np.concatenate([data, data[:, :, ::-1][:, :, :96]], axis=2)  # 224 x 320
    profile.update(width=big.shape[2])
    path = tmp_path / "wide.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(big)
    code = main(["generate", "--model", str(assets["model"]), "--input", f"S2L2A={path}", "--output-modalities",
                 "DEM", "--output-dir", str(tmp_path / "out"), "--timesteps", "1", "--tokenizer",
                 f"DEM={assets['DEM']}", "--batch-size", "2", "--no-progress"])  # fmt: skip
    assert code == 0
    with rasterio.open(tmp_path / "out" / "DEM.tif") as out:
        assert (out.height, out.width) == (224, 320) and out.transform == profile["transform"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "--input", "FOO=x.tif", "--output", "e.tif"], "Unknown modality 'FOO'"),
        (["embed", "--input", "S2L2A", "--output", "e.tif"], "MODALITY=PATH"),
        (["embed", "--input", "S2L2A=missing.tif", "--output", "e.tif"], "does not exist"),
        (["embed", "--input", f"S2L2A={sample_tile('S2L2A')}", "--output", "e.png"], "must end in"),
        (
            ["generate", "--input", f"S2L2A={sample_tile('S2L2A')}", "--output-modalities", "RGB", "--output-dir", "o"],
            "cannot generate 'RGB'",
        ),
        (
            ["embed", "--model", "/nonexistent/model", "--input", f"S2L2A={sample_tile('S2L2A')}", "--output", "e.tif"],
            "/nonexistent/model: no such folder",
        ),
    ],
)
def test_user_mistakes_give_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_console_entry_point_exits_non_zero(tmp_path):
    result = subprocess.run([sys.executable, "-m", "terramind.cli", "embed", "--input", "S2L2A=nope.tif",
                             "--output", "e.tif"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_finetune_wraps_the_finetuning_script(tmp_path, caplog):
    import json

    overrides = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_decoder_layers": 1,
                 "decoder_hidden_size": 16}  # fmt: skip
    code = main(["finetune", "--data_root", str(SAMPLES), "--modalities", "S2L2A", "S1RTC", "--label_dir", "LULC",
                 "--num_labels", "11", "--variant", "tiny", "--config_overrides", json.dumps(overrides),
                 "--crop_size", "64", "--output_dir", str(tmp_path), "--max_steps", "2",
                 "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
                 "--disable_tqdm", "true"])  # fmt: skip
    assert code == 0
    assert (tmp_path / "model.safetensors").exists()
    assert "Evaluating on the training samples" in caplog.text  # no eval_split: the metrics measure fit


def test_convert_a_tokenizer_checkpoint(tmp_path):
    """`terramind convert --tokenizer-checkpoint` gives a folder with the original's tokens (golden LULC case)."""
    import json

    import torch
    from conftest import FIXTURES, MINI_TOKENIZER, MINI_VIT_DECODER

    from terramind import TerraMindTokenizerModel

    overrides = dict(MINI_TOKENIZER, num_channels=10, num_classes=10, **MINI_VIT_DECODER)
    code = main(["convert", "--tokenizer-checkpoint", str(FIXTURES / "tokenizer_lulc_vqvae_original.pt"),
                 "--modality", "LULC", "--config", json.dumps(overrides), "--output", str(tmp_path / "lulc")])  # fmt: skip
    assert code == 0
    tokenizer = TerraMindTokenizerModel.from_pretrained(tmp_path / "lulc")
    case = torch.load(FIXTURES / "tokenizer_cases.pt", weights_only=True)["lulc_vqvae"]
    seed, shape, classes = case["input"]["classes"]
    class_map = torch.from_numpy(np.random.default_rng(seed).integers(0, classes, size=shape))
    assert torch.equal(tokenizer.encode(class_map).tokens, case["tokens"])


# ----------------------------------------------------------------------------- outputs on the user's disk
def test_outputs_are_never_overwritten_unasked(assets, tmp_path):
    out = tmp_path / "emb.tif"
    out.write_text("an unrelated file")
    argv = ["embed", "--model", assets["model"], "--input", f"S2L2A={sample_tile('S2L2A')}", "--output", out, "--no-progress"]
    assert one_line_error(cli(*argv), f"{out} exists; pass --overwrite")
    assert out.read_text() == "an unrelated file"
    assert cli(*argv, "--overwrite").returncode == 0
    with rasterio.open(out) as emb:
        assert emb.count == 16
    # generate checks every output before it starts: one existing file stops the run, nothing is written
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "LULC.png").write_bytes(b"old")
    code = main(["generate", "--model", str(assets["model"]), "--input", f"S1RTC={sample_tile('S1RTC')}",
                 "--output-modalities", "LULC", "--output-dir", str(tmp_path / "gen"), "--tokenizer",
                 f"LULC={assets['LULC']}", "--no-progress"])  # fmt: skip
    assert code == 2 and sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["LULC.png"]


SLOW_WRITER = """
import sys, time
import terramind.scenes.geotiff as geotiff
cast = geotiff._cast
def slow_cast(*args, **kwargs):  # the GeoTIFF is open for writing while this sleeps
    print("writing", flush=True)
    time.sleep(120)
    return cast(*args, **kwargs)
geotiff._cast = slow_cast
from terramind.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_leaves_complete_files_or_none(assets, tmp_path):
    out_dir = tmp_path / "generated"
    out_dir.mkdir()
    (out_dir / "LULC.tif").write_bytes(b"the previous run")
    argv = ["generate", "--model", assets["model"], "--input", f"S1RTC={sample_tile('S1RTC')}", "--output-modalities",
            "LULC", "--output-dir", out_dir, "--tokenizer", f"LULC={assets['LULC']}", "--overwrite", "--no-progress"]  # fmt: skip
    for sig, code in ((signal.SIGTERM, 130), (signal.SIGKILL, -signal.SIGKILL)):
        process = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, *map(str, argv)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        assert process.stdout.readline().strip() == "writing", process.stderr.read()[-2000:]
        process.send_signal(sig)
        process.wait(timeout=120)
        process.stdout.close()
        process.stderr.close()
        assert process.returncode == code
        assert (out_dir / "LULC.tif").read_bytes() == b"the previous run"  # untouched, not a half-written GeoTIFF
        assert not (out_dir / "LULC.png").exists()
        leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(".")]
        if sig == signal.SIGTERM:
            assert leftovers == []  # an interrupted run cleans up after itself
        else:
            assert len(leftovers) == 1 and leftovers[0].startswith(".LULC.tif.partial-")  # hidden, never the target
    assert main([str(a) for a in argv]) == 0  # the next run completes and removes the killed run's partial
    assert sorted(p.name for p in out_dir.iterdir()) == ["LULC.png", "LULC.tif"]
    with rasterio.open(out_dir / "LULC.tif") as out:
        assert (out.count, out.height, out.width) == (1, 224, 224)


# ----------------------------------------------------------------------------- user mistakes, in one line
@pytest.fixture
def mistakes(assets, tmp_path) -> dict[str, str]:
    (tmp_path / "text.tif").write_text("not a GeoTIFF")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "TerraMind_v1_base.pt").write_text("")
    return {"text": str(tmp_path / "text.tif"), "file": str(tmp_path / "a_file"), "tmp": str(tmp_path),
            "release": str(tmp_path / "release"), **{k: str(v) for k, v in assets.items()}}  # fmt: skip


EMBED = [
    "embed",
    "--model",
    "{model}",
    "--no-progress",
    "--input",
    f"S2L2A={sample_tile('S2L2A')}",
    "--output",
    "{tmp}/e.tif",
]
GENERATE = ["generate", "--model", "{model}", "--no-progress", "--input", f"S1RTC={sample_tile('S1RTC')}",
            "--output-modalities", "LULC", "--output-dir", "{tmp}/out"]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "--input", "S2L2A={text}", "--output", "{tmp}/e.tif"], "text.tif is not a readable GeoTIFF"),
        ([*EMBED, "--device", "cuda:7"], "--device cuda:7 is not available here"),
        ([*EMBED, "--device", "gpu"], "--device gpu is not available here"),
        ([*EMBED[:2], "{LULC}", *EMBED[3:]], "is a TerraMind tokenizer, not a TerraMind model"),
        ([*GENERATE[:-1], "{file}"], "a_file is a file; give a folder"),
        ([*EMBED, "--batch-size", "-1"], "argument --batch-size: expected an integer >= 1, got '-1'"),
        ([*EMBED, "--batch-size", "0"], "expected an integer >= 1, got '0'"),
        ([*EMBED, "--tile-size", "-16"], "argument --tile-size: expected an integer >= 16, a multiple of 16"),
        ([*EMBED, "--tile-size", "0"], "expected an integer >= 16, a multiple of 16, got '0'"),
        (
            ["convert", "--checkpoint", "{release}/TerraMind_v1_base.pt", "--config", "[1]", "--output", "{tmp}/c"],
            "--config must be a JSON object",
        ),
        (
            ["convert", "--checkpoint", "{release}", "--output", "{tmp}/c"],
            "release is a folder; give the checkpoint file in it (TerraMind_v1_base.pt there)",
        ),
        ([*GENERATE, "--temperature", "-1"], "argument --temperature: expected a number >= 0, got '-1'"),
        ([*GENERATE, "--top-k", "-5"], "argument --top-k: expected an integer >= 0, got '-5'"),
        ([*GENERATE, "--top-p", "2"], "argument --top-p: expected a number in [0, 1], got '2'"),
        ([*GENERATE, "--tokenizer", "LULC={S1GRD}"], "is the S1GRD tokenizer"),
        ([*GENERATE, "--tokenizer", "DEM={DEM}"], "--tokenizer DEM is given but neither generated"),
        ([*EMBED[:2], "./missing_model", *EMBED[3:]], "./missing_model: no such folder"),
        ([], "the following arguments are required"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(mistakes, argv, message, capsys):
    if "cuda" in " ".join(argv) and __import__("torch").cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    try:
        code = main([part.format(**mistakes) for part in argv])
    except SystemExit as exit:  # argparse's errors
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err and "Traceback" not in err, err


def test_console_mistakes_are_one_line(tmp_path):
    """The same through the console entry point, in a fresh interpreter (argparse errors and run-time ones)."""
    assert one_line_error(cli("embed", "--input", f"S2L2A={sample_tile('S2L2A')}", "--output", tmp_path / "e.tif",
                              "--batch-size", "-1"), "expected an integer >= 1, got '-1'")  # fmt: skip
    (tmp_path / "text.tif").write_text("not a GeoTIFF")
    assert one_line_error(cli("embed", "--input", f"S2L2A={tmp_path / 'text.tif'}", "--output", tmp_path / "e.tif"),
                          "text.tif is not a readable GeoTIFF")  # fmt: skip


# ----------------------------------------------------------------------------- nodata
def write_scene(tmp_path: Path) -> dict[str, Path]:
    """The sample tile with no data at all in its top-left 32 x 32 pixels, and S2L2A nodata in rows 96-111 only."""
    paths = {}
    for modality in ("S2L2A", "S1RTC"):
        with rasterio.open(sample_tile(modality)) as src:
            data, profile = src.read(), dict(src.profile)
        if modality == "S2L2A":
            data[:, :32, :32] = 0
            data[:, 96:112] = 0
            profile["nodata"] = 0
        else:
            data[:, :32, :32] = np.nan
            profile["nodata"] = np.nan
        paths[modality] = tmp_path / f"{modality}.tif"
        with rasterio.open(paths[modality], "w", **profile) as dst:
            dst.write(data)
    return paths


def test_outputs_mark_nodata(assets, tmp_path):
    paths = write_scene(tmp_path)
    inputs = ["--input", f"S2L2A={paths['S2L2A']}", "--input", f"S1RTC={paths['S1RTC']}"]
    assert main(["embed", "--model", str(assets["model"]), *inputs, "--output", str(tmp_path / "emb.tif"),
                 "--no-progress"]) == 0  # fmt: skip
    with rasterio.open(tmp_path / "emb.tif") as emb:
        values = emb.read()
        assert math.isnan(emb.nodata)
    empty = np.zeros((14, 14), bool)
    empty[:2, :2] = True  # the patches of the empty 32 x 32 corner; S1RTC still has data in rows 96-111
    assert np.isnan(values[:, empty]).all() and np.isfinite(values[:, ~empty]).all()

    code = main(["generate", "--model", str(assets["model"]), *inputs, "--output-modalities", "LULC,S2L2A",
                 "--output-dir", str(tmp_path / "gen"), "--timesteps", "1", "--tokenizer", f"LULC={assets['LULC']}",
                 "--tokenizer", f"S2L2A={assets['S2L2A']}", "--no-progress"])  # fmt: skip
    assert code == 0
    empty = np.zeros((224, 224), bool)
    empty[:32, :32] = True
    for name, nodata in (("LULC", 255), ("S2L2A", -32768)):
        with rasterio.open(tmp_path / "gen" / f"{name}.tif") as out:
            values = out.read()
            assert out.nodata == nodata
        assert (values[:, empty] == nodata).all() and (values[:, ~empty] != nodata).all()
        with Image.open(tmp_path / "gen" / f"{name}.png") as png:
            assert (np.asarray(png)[:32, :32] == 0).all()  # black, not a made-up colour


# ----------------------------------------------------------------------------- feedback
def test_help_is_fast_and_complete():
    start = time.perf_counter()
    result = cli("--help")
    seconds = time.perf_counter() - start
    assert result.returncode == 0 and "{convert,embed,generate,finetune,predict,export,pretrain}" in result.stdout
    assert seconds < 2.0, f"terramind --help took {seconds:.1f} s"
    lazy = subprocess.run([sys.executable, "-c", "import sys, terramind; print(sorted({'torch', 'transformers', "
                           "'rasterio'} & set(sys.modules)))"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert lazy.stdout.strip() == "[]"  # `import terramind` loads none of the heavy libraries
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("terramind ")
    embed_help = cli("embed", "--help").stdout
    assert "(default: 8)" in embed_help and "(default: 224)" in embed_help and "--overwrite" in embed_help
    generate_help = cli("generate", "--help").stdout
    assert "nucleus sampling" in generate_help and "k most likely tokens" in generate_help


def test_finetune_help_shows_what_matters(capsys):
    for flag in ("--help", "--help-all"):
        with pytest.raises(SystemExit) as exit:
            main(["finetune", flag])
        assert exit.value.code == 0
    short, full = capsys.readouterr().out.split("usage: terramind finetune")[1:]
    assert "--data_root" in short and "--max_steps" in short and "--adam_beta1" not in short
    assert len(short.splitlines()) < 200
    assert "--adam_beta1" in full and len(full.splitlines()) > 2 * len(short.splitlines())


def test_no_progress_hides_every_bar(assets, tmp_path, capsys):
    from transformers.utils import logging as transformers_logging

    argv = ["embed", "--model", str(assets["model"]), "--input", f"S2L2A={sample_tile('S2L2A')}"]
    try:
        assert main([*argv, "--output", str(tmp_path / "a.tif")]) == 0
        shown = capsys.readouterr().err
        assert "Loading weights" in shown and "embedding tiles" in shown
        assert main([*argv, "--output", str(tmp_path / "b.tif"), "--no-progress"]) == 0
        hidden = capsys.readouterr().err
        assert "Loading weights" not in hidden and "it/s" not in hidden
    finally:
        transformers_logging.enable_progress_bar()


def test_bf16_on_a_cpu_without_native_bf16_warns(assets, tmp_path, monkeypatch, caplog):
    import terramind.cli.hardware

    monkeypatch.setattr(terramind.cli.hardware, "cpu_has_native_bf16", lambda: False)
    assert main(["embed", "--model", str(assets["model"]), "--input", f"S2L2A={sample_tile('S2L2A')}", "--output",
                 str(tmp_path / "e.tif"), "--dtype", "bf16", "--no-progress"]) == 0  # fmt: skip
    assert "bf16 on this CPU is emulated" in caplog.text and "use fp32 here" in caplog.text
    caplog.clear()
    assert main(["embed", "--model", str(assets["model"]), "--input", f"S2L2A={sample_tile('S2L2A')}", "--output",
                 str(tmp_path / "f.tif"), "--no-progress"]) == 0  # fmt: skip
    assert "bf16" not in caplog.text


def test_auto_classes_after_a_bare_import(assets):
    """`import terramind` loads nothing heavy, yet Transformers' Auto classes know TerraMind afterwards."""
    body = f"""
import sys
import terramind
assert not {{"torch", "transformers"}} & set(sys.modules)
from transformers import AutoConfig, AutoModel, AutoProcessor
print(type(AutoConfig.from_pretrained({str(assets["model"])!r})).__name__)
print(type(AutoModel.from_pretrained({str(assets["model"])!r})).__name__)
print(type(AutoProcessor.from_pretrained({str(assets["model"])!r})).__name__)
from terramind.modeling_terramind import TerraMindModel
print(TerraMindModel._auto_class)
"""
    result = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["TerraMindConfig", "TerraMindModel", "TerraMindProcessor", "AutoModel"]


@pytest.mark.slow
def test_device_check_script_runs(tmp_path):
    """scripts/check_device.py (what scripts/check_gpu.sh runs on a GPU) on the CPU against itself, narrow."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_device.py"), "--device", "cpu", "--dtype",
                             "fp32", "--width", "narrow", "--work-dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "5 of 5 checks passed" in result.stdout
    assert (tmp_path / "1_cpu_fp32" / "generated" / "LULC.tif").exists()
