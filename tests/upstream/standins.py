"""Stand-ins for the modules that Transformers' common tests import but the sdist does not ship.

Each is registered in `sys.modules` only while the extracted sdist lacks the real module, so a release that ships it
uses its own. What they stand for, and why the stand-in is enough here:

- `tests/utils/test_configuration_utils.py: config_common_kwargs`: non-default values of `PreTrainedConfig`'s
  common settings, which `ConfigTester.check_config_arguments_init` passes to the config and reads back.
- `tests/exporters/test_export.py: ExportTesterMixin`: a base of `ModelTesterMixin` adding `torch.export` tests;
  without the module those tests do not run (export is covered by the project's own ONNX export tests).
- `tests/generation/test_utils.py: GenerationTesterMixin`: only checked with `issubclass` for models that can call
  `GenerationMixin.generate`; TerraMind's generation is its own (`all_generative_model_classes = ()`).
- `utils/fetch_hub_objects_for_ci.py: url_to_local_path`: maps test-image URLs to files pre-fetched by upstream CI;
  here the URL is returned as is (tests that download images need the network).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

CONFIG_COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["TerraMindModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}


class ExportTesterMixin:
    """Stand-in: the sdist does not ship `tests/exporters/test_export.py`."""


class GenerationTesterMixin:
    """Stand-in: the sdist does not ship `tests/generation/test_utils.py`."""


def url_to_local_path(url: str, return_url_if_not_found: bool = True) -> str:
    return url


# module (relative to the tests package, or top level when it starts with "/") -> its names
_STANDINS = {
    "utils.test_configuration_utils": {"config_common_kwargs": CONFIG_COMMON_KWARGS},
    "exporters.test_export": {"ExportTesterMixin": ExportTesterMixin},
    "generation.test_utils": {"GenerationTesterMixin": GenerationTesterMixin},
    "/fetch_hub_objects_for_ci": {"url_to_local_path": url_to_local_path},
}


def install_standins(package_dir: Path, package: str) -> None:
    """Register a stand-in for each module above that `package_dir` (the extracted `tests/`) lacks."""
    for name, names in _STANDINS.items():
        if name.startswith("/"):
            full, path = name[1:], package_dir.parent / "utils" / f"{name[1:]}.py"
        else:
            full, path = f"{package}.{name}", package_dir.joinpath(*name.split(".")).with_suffix(".py")
        if path.is_file() or full in sys.modules:
            continue
        parts = full.split(".")
        for depth in range(2, len(parts)):  # parent packages the sdist lacks (e.g. `transformers_tests.exporters`)
            parent = ".".join(parts[:depth])
            if parent not in sys.modules and importlib.util.find_spec(parent) is None:
                stub = ModuleType(parent)
                stub.__path__ = []
                sys.modules[parent] = stub
        module = ModuleType(
            full, f"Stand-in for {full} (not in the transformers sdist), see tests/upstream/standins.py"
        )
        module.__dict__.update(names)
        sys.modules[full] = module
