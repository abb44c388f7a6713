"""The declared dependency ranges: CI's lowest-release run pins exactly setup.cfg's lower bounds, every fast-moving
dependency has an upper bound at a major release (the next after the newest tested), and the environment under test
lies inside the declared ranges."""

from __future__ import annotations

import configparser
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
FAST_MOVING = ("transformers", "huggingface_hub", "tokenizers", "safetensors", "accelerate", "peft", "datasets")


def install_requires() -> dict[str, Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line.split("#")[0].strip() for line in config["options"]["install_requires"].splitlines()]
    requirements = [Requirement(line) for line in lines if line]
    return {r.name.lower().replace("-", "_"): r for r in requirements}


def lowest_pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints-lowest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            pins[requirement.name.lower().replace("-", "_")] = Version(spec.version)
    return pins


@pytest.mark.parametrize("name", FAST_MOVING)
def test_declared_range_is_lowest_tested_up_to_a_major(name):
    requirement = install_requires()[name]
    lower = {Version(s.version) for s in requirement.specifier if s.operator == ">="}
    upper = {Version(s.version) for s in requirement.specifier if s.operator == "<"}
    assert lower == {lowest_pins()[name]}, f"{name}: setup.cfg's lower bound and .ci/constraints-lowest.txt differ"
    (lowest,), (below,) = lower, upper
    assert below == Version(f"{below.major}") and below.major > lowest.major, f"{name}: upper bound not at a major"


def test_lowest_constraints_name_only_declared_dependencies():
    assert set(lowest_pins()) == set(FAST_MOVING)


@pytest.mark.parametrize("name", FAST_MOVING)
def test_environment_under_test_is_inside_the_declared_range(name):
    assert install_requires()[name].specifier.contains(version(name), prereleases=True), (name, version(name))
