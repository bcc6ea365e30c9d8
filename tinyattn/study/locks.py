"""The run lock: an exclusive claim on one run, so that two runners on one results folder (two
processes, two drivers of a Ray cluster, two machines on a shared folder) never make it twice."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from tinyattn.experiment import RunParams


class RunLock:
    """An exclusive claim on one run, so two runners on one results folder never do it twice."""

    def __init__(self, params: RunParams) -> None:
        self.path = Path(params.out_dir) / ".locks" / f"{params.run_id}.lock"

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
            return True
        return False

    def _stale(self) -> bool:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return True
        if owner.get("host") != socket.gethostname():
            return False  # another machine's claim on a shared folder: respect it
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    @staticmethod
    def clear_stale(out_dir: str | Path) -> None:
        """Remove the locks that runners on this machine left when they were killed."""
        for path in (Path(out_dir) / ".locks").glob("*.lock"):
            lock = RunLock.__new__(RunLock)
            lock.path = path
            if lock._stale():
                path.unlink(missing_ok=True)
