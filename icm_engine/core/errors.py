"""The one base class of the errors a user can fix: a bad file, a run that does not exist, a setting
the database cannot hold. Each layer raises its own kind (data's DatasetError, store's StoreError,
...), every kind derives from InputError, and the CLI's entry point turns any of them into one line
and exit status 2 for every subcommand at once. Anything else that escapes is a bug and keeps its
traceback.
"""
from __future__ import annotations


class InputError(Exception):
    """Something the user gave cannot be used; the message says what and where, and is the whole answer."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise show their message in quotes
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()
