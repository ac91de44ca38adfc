"""Model downloads started from the UI: one background thread per model, progress measured on disk.

Progress is the size of the model's folder against the size the hub lists for its files (what
:func:`localvideo.runtime.store.pull` downloads), so the bar shows bytes that really arrived. A failure (no network,
no disk space) is kept with its message and hint.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..catalog import get_model
from ..errors import LocalVideoError
from ..settings import Settings

log = logging.getLogger(__name__)


class Pulls:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._state: dict[str, dict[str, Any]] = {}

    def start(self, model_id: str) -> dict:
        spec = get_model(model_id)
        with self._lock:
            cur = self._state.get(model_id)
            if cur is not None and cur["state"] == "running":
                return dict(cur)
            self._state[model_id] = {"state": "running", "bytes": 0, "total": None}
        threading.Thread(target=self._run, args=(spec,), name=f"localvideo-pull-{model_id}", daemon=True).start()
        return self.get(model_id) or {}

    def get(self, model_id: str) -> dict | None:
        with self._lock:
            cur = self._state.get(model_id)
            if cur is None:
                return None
            out = dict(cur)
        if out["state"] == "running" and out.get("total"):
            out["bytes"] = _size(self._dest(model_id))
        return out

    def all(self) -> dict[str, dict]:
        with self._lock:
            ids = list(self._state)
        return {i: s for i in ids if (s := self.get(i)) is not None}

    def running(self) -> bool:
        with self._lock:
            return any(s["state"] == "running" for s in self._state.values())

    def _dest(self, model_id: str):
        from ..runtime.store import models_folder_path

        return models_folder_path(get_model(model_id), self.settings)

    def _run(self, spec) -> None:
        from ..runtime.store import download_size, pull

        try:
            if not spec.tiny:
                total = download_size(spec)
                with self._lock:
                    self._state[spec.id]["total"] = total
            done = pull(spec, self.settings)
            result = {"state": "succeeded", "path": str(done.path), "size": done.size_bytes}
        except LocalVideoError as e:
            result = {"state": "failed", "message": e.message, "hint": e.hint}
        except Exception as e:  # noqa: BLE001 - the hub's own errors (no network): shown, not raised
            log.warning("pull of %s failed: %s", spec.id, e)
            result = {"state": "failed", "message": f"Could not reach the Hugging Face hub: {e}".strip(),
                      "hint": "Check the network (and HF_TOKEN for gated models), then pull again; finished files "
                              "are kept."}
        with self._lock:
            self._state[spec.id] = result


def _size(path) -> int:
    try:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:
        return 0
