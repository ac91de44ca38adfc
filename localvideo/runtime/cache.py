"""Loaded pipelines kept warm across generations in one process: an LRU under a memory budget, lent to one job at
a time.

The key says everything that makes two loaded pipelines different (model, weights folder, dtype, device, memory
strategy, run options). A hit costs nothing; a miss loads, then evicts the least recently used pipelines until the
total fits the budget (the newest always stays, even when it alone is over budget).

A diffusers pipeline is not re-entrant: its scheduler keeps per-call state (timesteps, step index, previous model
outputs), and a run sets LoRA weights, step caches and VAE tiling on it. So a job *leases* an entry
(:meth:`PipelineCache.use`) for the whole of its run, and another job that wants the same entry waits (its
``on_wait(True)`` is called when the wait begins and ``on_wait(False)`` when it ends, so the caller can show it as
waiting; its ``cancel`` is honoured while it waits). An
entry in use is never evicted or freed under the job using it: over-budget trimming skips it, and an explicit
:meth:`evict` (the OOM ladder) of an entry in use is deferred until it is handed back. Loading the same model under
another key (another strategy, LoRA set, …) waits until the other key is free, then replaces it, so weights are never
held twice on one device. Loads run outside the cache's lock: hits and hand-backs of other entries never wait for a
load. The runner holds at most one lease per thread; a thread asking for a model it already holds gets an error,
not a deadlock.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator

from ..errors import Cancelled

log = logging.getLogger(__name__)

WAIT_POLL_S = 0.1  # how often a waiting job looks at its cancel event


@dataclass
class CacheStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0
    waits: int = 0  # leases that had to wait for another job
    load_keys: list = field(default_factory=list)


@dataclass
class _Entry:
    value: Any
    size: int
    holder: int | None = None  # thread id of the job using it, None when free
    evict_on_release: bool = False


@dataclass(frozen=True)
class Lease:
    """A cached pipeline lent to one job: ``value`` (the pipeline), ``hit`` (was it warm), ``waited_s``."""

    key: Hashable
    value: Any
    hit: bool
    waited_s: float = 0.0


class PipelineCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self._items: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._loading: dict[Hashable, int] = {}  # key → thread id loading it (outside the lock)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # an entry was handed back, loaded, or a load failed
        self.stats = CacheStats()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def used_bytes(self) -> int:
        return sum(e.size for e in self._items.values())

    def keys(self) -> list[Hashable]:
        return list(self._items)

    def pipelines(self) -> list[tuple[Hashable, Any]]:
        """``(key, pipeline)`` of every cached entry, least recently used first: to inspect, not to run (a run takes
        a lease, :meth:`use`)."""
        with self._lock:
            return [(k, e.value) for k, e in self._items.items()]

    def in_use(self, key: Hashable) -> bool:
        with self._lock:
            e = self._items.get(key)
            return key in self._loading or (e is not None and e.holder is not None)

    # -- leases ---------------------------------------------------------------------------------------------
    @contextmanager
    def use(self, key: Hashable, load: Callable[[], tuple[Any, int]], *, cancel=None,
            on_wait: Callable[[bool], None] | None = None) -> Iterator[Lease]:
        """Lease the pipeline under ``key`` (loading it with ``load() -> (pipeline, size_bytes)`` on a miss) for
        the ``with`` block; it is handed back however the block ends (success, error, cancel).

        Waits while another job uses it (or the same model under another key). ``cancel`` (a ``threading.Event``
        or a callable returning True) stops the wait with :class:`~localvideo.errors.Cancelled`; ``on_wait(True)`` is
        called when a wait begins, ``on_wait(False)`` when it ends with the lease (before a load)."""
        lease = self.acquire(key, load, cancel=cancel, on_wait=on_wait)
        try:
            yield lease
        finally:
            self.release(key)

    def acquire(self, key: Hashable, load: Callable[[], tuple[Any, int]], *, cancel=None,
                on_wait: Callable[[bool], None] | None = None) -> Lease:
        """Take a lease (see :meth:`use`); every acquire must be paired with :meth:`release`. Callbacks and the load
        run outside the cache's lock."""
        me = threading.get_ident()
        t0, waited = time.perf_counter(), False
        while True:
            with self._changed:
                got = self._take(key, me)
                if got is None:
                    self._check_not_waiting_on_itself(key, me)
                if got is None and waited:
                    if _is_cancelled(cancel):
                        raise Cancelled("Generation cancelled while waiting for the model (another job was using "
                                        "it); no video was written.")
                    self._changed.wait(WAIT_POLL_S)
                    continue
                if got is None:
                    self.stats.waits += 1
            if got is not None:
                break
            waited = True
            log.info("waiting for %s: another job is using this model", key)
            if on_wait is not None:
                on_wait(True)
        hit, entry = got
        waited_s = time.perf_counter() - t0 if waited else 0.0
        try:
            if waited and on_wait is not None:
                on_wait(False)
            if hit:
                return Lease(key, entry.value, True, waited_s)
            value, size = load()
        except BaseException:
            with self._changed:
                if hit:
                    entry.holder = None
                self._loading.pop(key, None)
                self._changed.notify_all()
            raise
        with self._changed:
            self._loading.pop(key, None)
            self.stats.loads += 1
            self.stats.load_keys.append(key)
            self._items[key] = _Entry(value, int(size), holder=me)
            self._trim()
            self._changed.notify_all()
        return Lease(key, value, False, waited_s)

    def _take(self, key: Hashable, me: int) -> tuple[bool, _Entry | None] | None:
        """Under the lock: ``(True, entry)`` for a free hit (now held by ``me``), ``(False, None)`` for a miss that
        ``me`` may load now (marked loading), None while the key or the same model on the device is busy."""
        entry = self._items.get(key)
        if key in self._loading or (entry is not None and entry.holder is not None):
            return None
        if entry is not None:
            entry.holder = me
            self._items.move_to_end(key)
            self.stats.hits += 1
            return True, entry
        others = self._same_model_keys(key)
        if any(k in self._loading or self._items[k].holder is not None for k in others):
            return None
        for other in others:  # a miss: its weights would be held twice on this device; replace them
            self._evict(other)
        self._loading[key] = me
        return False, None

    def release(self, key: Hashable) -> None:
        """Hand a lease back: the entry is free for the next job (or evicted now, if that was asked meanwhile)."""
        with self._changed:
            entry = self._items.get(key)
            if entry is not None and entry.holder is not None:
                entry.holder = None
                if entry.evict_on_release:
                    self._evict(key)
                else:
                    self._trim()
            self._changed.notify_all()

    def get_or_load(self, key: Hashable, load: Callable[[], tuple[Any, int]]) -> tuple[Any, bool]:
        """Return ``(pipeline, was_cached)`` without keeping a lease: for a caller that is the only user of this
        cache (a one-off script, a test). Jobs use :meth:`use`."""
        lease = self.acquire(key, load)
        self.release(key)
        return lease.value, lease.hit

    # -- eviction -------------------------------------------------------------------------------------------
    def evict(self, key: Hashable) -> None:
        """Drop ``key`` now, or — when a job is using it — as soon as that job hands it back."""
        with self._changed:
            entry = self._items.get(key)
            if entry is None:
                return
            if entry.holder is not None:
                entry.evict_on_release = True
                log.info("%s is in use; it will be evicted when the job using it ends", key)
                return
            self._evict(key)
            self._changed.notify_all()

    def evict_all(self) -> None:
        for k in self.keys():
            self.evict(k)

    def _trim(self) -> None:
        """Evict free entries, least recently used first, while over budget and more than one entry is left (a
        pipeline just loaded is in use, so it stays, even when it alone is over budget)."""
        while self.used_bytes > self.budget_bytes and len(self._items) > 1:
            victim = next((k for k, e in self._items.items() if e.holder is None), None)
            if victim is None:
                return  # everything else is in use: over budget until one is handed back
            self._evict(victim)

    def _evict(self, key: Hashable) -> None:
        self._items.pop(key, None)
        self.stats.evictions += 1
        log.info("evicted %s from the pipeline cache", key)
        free_memory()

    def _same_model_keys(self, key: Hashable) -> list[Hashable]:
        return [k for k in (*self._items, *self._loading) if k != key and _same_model(k, key)]

    def _check_not_waiting_on_itself(self, key: Hashable, me: int) -> None:
        mine = [k for k in (key, *self._same_model_keys(key))
                if self._loading.get(k) == me or (k in self._items and self._items[k].holder == me)]
        if mine:
            raise RuntimeError(f"This thread already holds the pipeline lease {mine[0]}; hand it back before asking "
                               "for this model again (waiting here would deadlock).")


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def free_memory() -> None:
    """Collect garbage and hand cached accelerator memory back (after an eviction or an OOM). Safe while other jobs
    run: it frees only what nothing references (``empty_cache`` returns unused cached blocks)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _same_model(a: Hashable, b: Hashable) -> bool:
    """Same model and weights folder on the same device (key: id, path, dtype, device, …): holding both would hold
    the weights twice there. The same model on two GPUs is two pipelines, one per worker."""
    if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) >= 4 and len(b) >= 4):
        return isinstance(a, tuple) and isinstance(b, tuple) and a[:2] == b[:2]
    return a[:2] == b[:2] and a[3] == b[3]
