"""The `terramind` command line: one module per command plus shared options (no torch import until a command runs)."""

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `terramind` command line (the console script's entry point)."""
    from .app import main as run

    return run(argv)
