"""Files that a crash cannot leave half written: the one way the server replaces a file of its own
(the build-state checkpoint, the webhook registry).  Standard library only."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable


def write_atomically(path: str, chunks: Iterable[bytes], tmp: str | None = None) -> int:
    """Replace ``path`` with ``chunks`` so that a crash at any point leaves the old file or the
    new one: a temporary file in the same directory (mode 0600), ``fsync``, ``rename``, then
    ``fsync`` of the directory so the rename itself survives a power cut.

    :param tmp: the temporary file's name (a caller that cleans up after a killed writer names
        it); by default a fresh one beside ``path``.
    :returns: the bytes written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if tmp is None:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=directory)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                written += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return written  # a platform that cannot open directories: the rename is still atomic
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return written
