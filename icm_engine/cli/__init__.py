"""`icm`, the command line: one module per subcommand, wired together in entry.py."""
from .entry import main

__all__ = ["main"]
