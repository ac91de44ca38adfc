"""Loaded pipelines kept warm across generations in one process: an LRU under a memory budget.

The key says everything that makes two loaded pipelines different (model, weights folder, dtype, device, memory
strategy). A hit costs nothing; a miss loads, then evicts the least recently used pipelines until the total fits the
budget (the newest always stays, even when it alone is over budget).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0
    load_keys: list = field(default_factory=list)


class PipelineCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.RLock()
        self.stats = CacheStats()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def used_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def keys(self) -> list[Hashable]:
        return list(self._items)

    def get_or_load(self, key: Hashable, load: Callable[[], tuple[Any, int]]) -> tuple[Any, bool]:
        """Return ``(pipeline, was_cached)``. ``load`` returns ``(pipeline, size_bytes)``."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.stats.hits += 1
                return self._items[key][0], True
            # Same model under another key (e.g. another strategy): drop it first, its weights would be duplicated.
            for other in [k for k in self._items if _same_model(k, key)]:
                self._evict(other)
            value, size = load()
            self.stats.loads += 1
            self.stats.load_keys.append(key)
            self._items[key] = (value, int(size))
            while self.used_bytes > self.budget_bytes and len(self._items) > 1:
                self._evict(next(iter(self._items)))
            return value, False

    def evict(self, key: Hashable) -> None:
        with self._lock:
            if key in self._items:
                self._evict(key)

    def evict_all(self) -> None:
        with self._lock:
            for k in list(self._items):
                self._evict(k)

    def _evict(self, key: Hashable) -> None:
        self._items.pop(key, None)
        self.stats.evictions += 1
        log.info("evicted %s from the pipeline cache", key)
        free_memory()


def free_memory() -> None:
    """Collect garbage and hand cached accelerator memory back (after an eviction or an OOM)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _same_model(a: Hashable, b: Hashable) -> bool:
    return isinstance(a, tuple) and isinstance(b, tuple) and a[:2] == b[:2]
