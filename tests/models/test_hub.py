"""Names that look like paths are paths; a Hub id is tried once when the Hub cannot be reached."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import mini_tokenizer, tiny_config

from terramind import TerraMindCoordsTokenizer, TerraMindForGeneration, TerraMindModel, TerraMindProcessor
from terramind.hub import looks_like_path
from terramind.modeling_terramind_tokenizer import TerraMindTokenizerModel

ROOT = Path(__file__).resolve().parents[2]


def test_what_looks_like_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "terramind-v1-tiny").mkdir()
    for name in ("./model", "../model", "~/model", "/abs/model", "a/b/c", "model/", "C:\\models\\tiny",
                 "terramind-v1-tiny", tmp_path / "missing"):  # fmt: skip
        assert looks_like_path(name), name
    for name in ("ibm-esa-geospatial/TerraMind-1.0-base", "gpt2", "owner/name"):
        assert not looks_like_path(name), name


@pytest.mark.parametrize(
    "load",
    [TerraMindModel.from_pretrained, TerraMindForGeneration.from_pretrained, TerraMindTokenizerModel.from_pretrained,
     TerraMindCoordsTokenizer.from_pretrained, TerraMindProcessor.from_pretrained],
)  # fmt: skip
@pytest.mark.parametrize("name", ["./missing-model", "~/missing-terramind-model", "models/terramind/missing"])
def test_a_missing_path_fails_at_once(load, name):
    with pytest.raises(FileNotFoundError, match=f"{name}: no such folder"):
        load(name)


def test_home_paths_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    TerraMindModel(tiny_config()).save_pretrained(tmp_path / "model")
    mini_tokenizer("LULC").save_pretrained(tmp_path / "tokenizer")
    model = TerraMindModel.from_pretrained("~/model")
    assert model.config.hidden_size == 32
    tokenizer = TerraMindTokenizerModel.from_pretrained("~/tokenizer")
    assert tokenizer.config.modality == "LULC"


def test_an_unreachable_hub_is_tried_once(tmp_path):
    """With the Hub unreachable (a closed local port), loading a Hub id fails in seconds, not after ~25 s of
    retries per file, and says so once."""
    body = textwrap.dedent("""
        import time
        from terramind import TerraMindModel
        from terramind.modeling_terramind_tokenizer import TerraMindTokenizerModel
        start = time.perf_counter()
        for load in (TerraMindModel.from_pretrained, TerraMindModel.from_pretrained, TerraMindTokenizerModel.from_pretrained):
            try:
                load("someone/not-cached-anywhere")
            except OSError as error:
                print("OSError", str(error).splitlines()[0])
        print(f"seconds {time.perf_counter() - start:.1f}")
    """)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert sum(line.startswith("OSError") for line in lines) == 3
    assert float(lines[-1].split()[1]) < 10  # five retries with back-off take about 25 s per file
    assert result.stderr.count("cannot be reached") == 1
