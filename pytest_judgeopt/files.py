"""Writing files so that a reader sees the old content or the new, never half of either."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# os.open's mode for a new file, which the OS narrows by the process's umask: the mode any other new file of
# the user gets (a lock file to commit, a report for CI to publish), not a temporary file's 0600
NEW_FILE_MODE = 0o666


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target, sync, then rename over it: a kill at any moment leaves a whole file.

    The file is made with ``os.open`` and the umask's mode, not with ``tempfile.mkstemp`` (always 0600), and
    the umask is never changed to learn it: that is process-wide, and would race with other threads' files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), NEW_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
