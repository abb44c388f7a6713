"""Every shell command of the README that needs no network runs, on the shipped sample scene.

Commands marked `# needs the network` (official models and release files) and `# CI runs this` (the quickstart,
which CI itself runs) are skipped. The offline commands point at converted folders; the test provides tiny ones
under the README's names (`terramind-v1-tiny`, `terramind-v1-base`, `tokenizers/<MODALITY>`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fixture_checkpoint, mini_tokenizer

from terramind.conversion.checkpoint import convert_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARKERS = ("# needs the network", "# CI runs this")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.strip()
            if command and not command.startswith("#") and not any(m in command for m in SKIP_MARKERS):
                commands.append(command)
    return commands


def test_readme_has_offline_commands_for_every_cli_job():
    jobs = {shlex.split(c)[1] for c in readme_commands() if c.startswith("terramind ")}
    assert {"embed", "generate", "finetune", "predict"} <= jobs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("readme")
    (work / "samples").symlink_to(ROOT / "samples")
    for name, arch in (("terramind-v1-tiny", "tiny"), ("terramind-v1-base", "base")):
        convert_checkpoint(fixture_checkpoint(arch, tmp_path_factory.mktemp(arch)), work / name,
                           config_overrides={"num_attention_heads": 2})  # fmt: skip
    for modality in ("S2L2A", "LULC"):
        mini_tokenizer(modality).save_pretrained(work / "tokenizers" / modality)
    return work


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(workdir, command):
    argv = shlex.split(command)
    if argv[0] == "terramind":
        argv = [sys.executable, "-m", "terramind.cli", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
