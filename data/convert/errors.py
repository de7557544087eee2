"""The converter's error for malformed source files.

A conversion usually fails on someone else's data, so the error must say which file is wrong
and how; a bare TypeError from deep inside the reader, or a JSON parser's "Expecting value:
line 1 column 1" without a file name, leaves the user guessing. It is a DatasetError (what the
rest of the project catches for bad datasets) and a ValueError (bad input), so existing
handlers of either keep working; the command line prints it as one line and exits with 1.
"""
from __future__ import annotations

from data.episodes import DatasetError


class DatasetFormatError(DatasetError, ValueError):
    """A source file is unreadable or malformed; the message starts with the file's path."""
