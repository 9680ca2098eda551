"""Where the database is, unless a command is told (--db): the environment variable, which `icm app`
sets for the studio it starts so both open the same file, else runs/icm.duckdb.

Apart from database.py so that reading it costs no DuckDB import (every CLI parser asks for it).
"""
from __future__ import annotations

import os

DB_ENV = "ICM_STUDIO_DB"
DEFAULT_DB = "runs/icm.duckdb"


def default_db() -> str:
    return os.environ.get(DB_ENV, DEFAULT_DB)
