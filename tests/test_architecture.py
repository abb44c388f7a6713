"""Imports flow one way (ARCHITECTURE.md): the CLI -> the application packages -> the model files -> layers and
modalities. Read from the source with `ast` (module-level and function-level imports alike), so a lazy import inside
a function counts as much as one at the top: the model files must load where only Transformers is installed (a saved
folder ships them as remote code), and a cycle makes the import order decide what works."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "terramind"

# Rooms, lowest first; a module may import its own room and the rooms below it.
LAYERS = ("layers", "model", "application", "cli")
BOTTOM = {"terramind.modalities", "terramind.modeling_terramind_layers"}
MODEL_PREFIXES = ("configuration_", "modeling_", "generation_", "image_processing_", "processing_", "tokenization_")
MODEL_HELPERS = {"losses", "temporal", "hub"}  # model-level helpers the model files (remote code) need
APPLICATION_PACKAGES = ("training", "conversion", "scenes", "export")
APPLICATION_HELPERS = {"errors"}
# Old flat paths of moved modules that earlier READMEs and docs named, kept as aliases: they are the moved module.
COMPATIBILITY = {"finetuning", "data_terramind", "data_generation", "adapters", "geoparquet", "tiling"}
# Upward imports allowed by name (none today): a new one fails, and one listed here that is gone must be struck.
KNOWN_UPWARD: set[tuple[str, str]] = set()
# Cycles by design, each with its reason. Thinking-in-Modalities: as in the original, the encoder holds a frozen
# generator that holds an encoder, so TerraMindModel builds TerraMindThinkingInModalities (imported when a config
# asks for TiM) and that class is a TerraMindForGeneration.
KNOWN_CYCLES = [["terramind.modeling_terramind", "terramind.modeling_terramind_tim"]]


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source (top level, functions, methods)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(candidate for candidate in candidates if candidate in modules and candidate != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def layer(name: str) -> str | None:
    """The room of a module; None for the package's front door (terramind/__init__.py registers the Auto classes
    and re-exports the public names, so it may import any room, and no model file may import it)."""
    if name == "terramind":
        return None
    parts = name.split(".")[1:]
    if parts[0] == "cli":
        return "cli"
    if name in BOTTOM:
        return "layers"
    if (parts[0] in APPLICATION_PACKAGES or parts[0] in APPLICATION_HELPERS
            or parts[0] in COMPATIBILITY):
        return "application"
    if len(parts) == 1 and (parts[0].startswith(MODEL_PREFIXES) or parts[0] in MODEL_HELPERS):
        return "model"
    raise AssertionError(f"{name}: not in any room of tests/test_architecture.py; put it in a room (ARCHITECTURE.md)")


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    upward = set()
    for importer, imported in graph.items():
        if layer(importer) is None:
            continue
        for target in imported:
            target_layer = layer(target)
            if target_layer is None:
                if layer(importer) in ("layers", "model"):
                    upward.add((importer, target))
            elif LAYERS.index(target_layer) > LAYERS.index(layer(importer)):
                upward.add((importer, target))
    return upward


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_room():
    rooms = {name: layer(name) for name in module_files()}
    assert rooms["terramind.modeling_terramind"] == "model" and rooms["terramind.modalities"] == "layers"
    assert rooms["terramind.training.finetuning"] == "application" and rooms["terramind.cli.app"] == "cli"


def test_imports_flow_one_way():
    upward = upward_imports(import_graph())
    new = sorted(upward - KNOWN_UPWARD)
    assert not new, "upward imports (CLI -> application -> model -> layers): " + ", ".join(f"{a} -> {b}" for a, b in new)
    gone = sorted(KNOWN_UPWARD - upward)
    assert not gone, f"no longer imported: strike from KNOWN_UPWARD: {gone}"


def test_no_import_cycles():
    assert cycles(import_graph()) == KNOWN_CYCLES


def test_model_files_do_not_import_the_application():
    """The original-release resolvers are installed on the model classes by the package, never imported by them."""
    graph = import_graph()
    for name in ("terramind.modeling_terramind", "terramind.modeling_terramind_tokenizer"):
        assert not {target for target in graph[name] if target.startswith("terramind.conversion")}, name


@pytest.mark.parametrize(
    ("graph", "expected_upward", "expected_cycles"),
    [
        ({"terramind.modalities": {"terramind.modeling_terramind"}, "terramind.modeling_terramind": set()},
         {("terramind.modalities", "terramind.modeling_terramind")}, []),
        ({"terramind.modeling_terramind": {"terramind.training.finetuning"}, "terramind.training.finetuning": set()},
         {("terramind.modeling_terramind", "terramind.training.finetuning")}, []),
        ({"terramind.modeling_terramind": {"terramind"}, "terramind": set()},
         {("terramind.modeling_terramind", "terramind")}, []),
        ({"terramind.training.data_terramind": {"terramind.training.finetuning"},
          "terramind.training.finetuning": {"terramind.training.data_terramind"}},
         set(), [["terramind.training.data_terramind", "terramind.training.finetuning"]]),
        ({"terramind.cli.app": {"terramind.training.finetuning"}, "terramind.training.finetuning": set()}, set(), []),
    ],
)  # fmt: skip
def test_the_checks_catch_what_they_are_for(graph, expected_upward, expected_cycles):
    assert upward_imports(graph) == expected_upward
    assert cycles(graph) == expected_cycles


def test_function_level_imports_count(tmp_path):
    source = tmp_path / "terramind" / "modalities.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from .cli.app import main\n\n    return main\n")
    modules = {"terramind.modalities": source, "terramind.cli.app": source}
    assert imported_modules("terramind.modalities", source, modules) == {"terramind.cli.app"}


@pytest.mark.parametrize(("old", "new"), [("terramind.finetuning", "terramind.training.finetuning"),
                                          ("terramind.data_terramind", "terramind.training.data_terramind"),
                                          ("terramind.data_generation", "terramind.training.data_generation"),
                                          ("terramind.adapters", "terramind.training.adapters"),
                                          ("terramind.geoparquet", "terramind.scenes.geoparquet"),
                                          ("terramind.tiling", "terramind.scenes.tiling")])  # fmt: skip
def test_old_module_paths_are_the_moved_modules(old, new):
    """The paths README and docs used before the move still import, as the same module (monkeypatching either works)."""
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)
    assert importlib.import_module("terramind.conversion").convert_checkpoint  # the flat conversion.py's names
