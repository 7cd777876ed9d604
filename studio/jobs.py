"""Running jobs per browser session, so a Cancel click can reach the run it belongs to."""
from __future__ import annotations

import threading

from pipelines.events import CancelFlag


class JobRegistry:
    """Maps a session key (Gradio's session hash) to the cancel flag of its running job."""

    def __init__(self) -> None:
        self._flags: dict[str, CancelFlag] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> CancelFlag:
        flag = CancelFlag()
        with self._lock:
            self._flags[key] = flag
        return flag

    def cancel(self, key: str) -> bool:
        """Ask the session's running job to stop; False when it has none."""
        with self._lock:
            flag = self._flags.get(key)
        if flag is None:
            return False
        flag.cancel()
        return True

    def finish(self, key: str, flag: CancelFlag) -> None:
        with self._lock:
            if self._flags.get(key) is flag:
                del self._flags[key]

    def running(self) -> int:
        with self._lock:
            return len(self._flags)
