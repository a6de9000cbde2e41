"""Files written atomically: a reader sees the old file or the whole new one, never a part."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "save_figure"]

# Read once, at import: os.umask can only be read by setting it, which would race with
# files other threads create.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_write(path, mode="wb", *, encoding=None, newline=None):
    """Open a temporary file next to ``path``; on success it replaces ``path``.

    The data are flushed to disk before the rename, so an interrupted write, a full disk
    or a crash leaves either the previous file or none, and the temporary file is
    removed on any error. Concurrent writers (threads or processes) each get their own
    temporary file; the last rename wins. The file gets the permissions of the file it
    replaces, or those of a file made by :func:`open`.

    Parameters
    ----------
    path : str or path-like
        The destination; its folder must exist.
    mode : {"wb", "w"}, default="wb"
        Binary or text.
    encoding, newline : str, default=None
        As for :func:`open`, in text mode (``newline=""`` for :mod:`csv` writers).

    Yields
    ------
    file : file object

    Examples
    --------
    >>> import csv, tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "table.csv"
    ...     with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
    ...         csv.writer(handle).writerows([["pitch", 1.5]])
    ...     print(path.read_text(encoding="utf-8"), end="")
    pitch,1.5
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}.")
    if mode == "wb" and (encoding is not None or newline is not None):
        raise ValueError("encoding and newline apply to text mode (mode='w') only.")
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(
        mode, encoding=encoding, newline=newline, dir=path.parent, prefix=f".{path.name}.",
        suffix=".tmp", delete=False,
    )
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # The temporary file is private (0600): give it the permissions the file would
        # have if it had been written in place.
        try:
            permissions = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            permissions = 0o666 & ~_UMASK
        os.chmod(handle.name, permissions)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def save_figure(figure, path, **kwargs):
    """Save a matplotlib figure through :func:`atomic_write`.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    path : str or path-like
        The destination; its suffix names the format (``.png``, ``.pdf``, ``.svg``...),
        as for ``figure.savefig(path)``, unless ``format`` is given.
    **kwargs
        Passed to :meth:`matplotlib.figure.Figure.savefig` (``dpi``...).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from matplotlib.figure import Figure
    >>> figure = Figure(figsize=(2, 1))
    >>> _ = figure.subplots().plot([0, 1], [1, 0])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_figure(figure, Path(folder) / "line.png", dpi=50)
    ...     print((Path(folder) / "line.png").read_bytes()[1:4])
    b'PNG'
    """
    path = Path(path)
    # Written to a file object, matplotlib cannot read the format from the name.
    kwargs.setdefault("format", path.suffix.lstrip(".") or None)
    with atomic_write(path) as handle:
        figure.savefig(handle, **kwargs)
