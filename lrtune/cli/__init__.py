"""The command line: a thin layer that parses, calls the public API, and prints."""

from lrtune.cli.main import main

__all__ = ["main"]
