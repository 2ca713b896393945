"""The ``modelhost`` command: parse, call one library function, print.

One module per group of commands; each registers itself on the shared typer app.
"""

from modelhost.cli import models, registry, serving
from modelhost.cli.base import app

__all__ = ["app", "main"]
_COMMAND_MODULES = (models, registry, serving)


def main() -> None:
    """Entry point of the ``modelhost`` script."""
    app()
