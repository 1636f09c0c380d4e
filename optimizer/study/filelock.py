"""An exclusive, non-blocking lock on a file, held for as long as a run needs it.

The kernel releases it when the holder dies, however it dies. The file names its holder
(``pid N``) so that a refused process can say who is in the way.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Optional

from optimizer.core.errors import StudyError

__all__ = ["ExclusiveFileLock"]


class ExclusiveFileLock:
    """Subclasses set ``path`` and say what to do when it is taken (:meth:`busy_message`)."""

    path: Path

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f: Optional[IO[str]] = None

    def busy_message(self, holder: str) -> str:
        return f"{self.path} is locked by {holder}"

    def acquire(self) -> "ExclusiveFileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StudyError(self.busy_message(holder)) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        self._f = f
        return self

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None

    def __enter__(self) -> "ExclusiveFileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
