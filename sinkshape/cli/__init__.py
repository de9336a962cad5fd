"""The ``sinkshape`` command line.

Each subcommand lives in its own module with two functions:
``add_parser(subparsers)`` declares its options and ``run(args) -> int`` runs it.
Invalid input (:class:`sinkshape.errors.InputError`, a missing or unreadable file)
prints one line on stderr and exits with status 2. Each Python warning, such as a
:class:`sinkshape.mesh.MeshWarning`, prints one line on stderr too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from sinkshape.errors import InputError

__all__ = ["main"]

#: Subcommand modules, imported when the parser is built.
SUBCOMMANDS = ("smooth", "register", "bench")

EXIT_INPUT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """Argument parser whose usage errors take one line on stderr and exit with 2."""

    def error(self, message: str):
        self.exit(EXIT_INPUT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with one sub-parser per subcommand."""
    from sinkshape import __version__

    parser = _Parser(
        prog="sinkshape",
        description="Sinkhorn-normalized diffusion on surfaces and point clouds.",
    )
    parser.add_argument("--version", action="version", version=f"sinkshape {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log the solver's progress"
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"sinkshape.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"sinkshape.cli.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # One line without the source line that the default format appends.
        text = " ".join(str(message).split())
        print(f"sinkshape {args.command}: warning: {text}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(args.run(args) or 0)
    except (InputError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
        print(f"sinkshape {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"sinkshape {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
