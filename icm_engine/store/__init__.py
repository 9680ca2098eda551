"""The database: database.py is the one module that talks to DuckDB; run_loader.py reads a stored
run back with its task and examples; location.py says which file, unless --db does; old_notes.py
reads the notes of databases before schema 5 once, when they are upgraded."""
