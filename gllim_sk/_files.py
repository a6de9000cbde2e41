"""Files written atomically: a reader sees the old file or the whole new one, never a part."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path):
    """Open a temporary binary file next to ``path``; on success it replaces ``path``.

    The data are flushed to disk before the rename, so an interrupted write, a full disk
    or a crash leaves either the previous file or none, and the temporary file is
    removed on any error. Concurrent writers (threads or processes) each get their own
    temporary file; the last rename wins.

    Parameters
    ----------
    path : str or path-like
        The destination; its folder must exist.

    Yields
    ------
    file : binary file object
    """
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(
        "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
