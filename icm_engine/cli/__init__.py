"""`icm`, the command line: one module per subcommand, wired together in main.py."""
from .main import main

__all__ = ["main"]
