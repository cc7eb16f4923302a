"""The one bounded memo type of the process (issue, section 5).

A :class:`Memo` maps keys to values computed from them. It is bounded (``maxsize`` entries;
the least recently used goes first), thread-safe (gunicorn's ``gthread`` workers share it: a
hit takes no lock, every change takes the memo's lock, a compute never runs under it), and
counted (hits, misses, evictions, exported by ``/metrics`` as ``saas_memo_*{memo="<name>"}``,
see :func:`saas.observability.metrics.publish_memos`).

Every memo has a name, listed with its key, bound and safety argument in ``docs/scaling.md``
(``tests/test_memo.py`` checks that every memo of ``saas`` and ``tenants`` is there, and that no
other memo mechanism is used). A name may have several live memos: one per object that owns
one (each app's :class:`saas.limits.Limiter`, for example); :func:`registered` lists them.

Use it only for values that are a pure function of the key (or checked against the source of
truth on every use, as the documentation of each memo says): a memo shared across requests
must never hold a tenant's data under a key without the tenant.

::

    PLANS = Memo("limits.plans", maxsize=10_000)
    plan = PLANS.get(key)
    if plan is None:
        plan = PLANS.put(key, build(key))

    @memoize("billing.catalogue", maxsize=4)
    def catalogue(path): ...
"""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = ["MISSING", "Memo", "MemoStats", "memoize", "registered"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
F = TypeVar("F", bound=Callable[..., Any])

#: ``get``'s default that no kept value can be (a kept value may be None)
MISSING: Any = object()

#: name -> the live memos of that name (weak: a memo goes with its owner)
_REGISTRY: dict[str, weakref.WeakSet[Memo[Any, Any]]] = {}
_REGISTRY_LOCK = threading.Lock()


class MemoStats(NamedTuple):
    """One memo's counters and size at one moment."""

    hits: int
    misses: int
    evictions: int
    size: int


class Memo(Generic[K, V]):
    """A bounded least-recently-used map with counters.

    A hit takes no lock (it is on the hot path of every request: one dictionary read, one
    reorder, one atomic count); misses, insertions and evictions take the memo's lock, so the
    bound holds and every count is exact whatever the threads do.

    Args:
        name: the memo's name in ``docs/scaling.md`` and in the ``memo`` label of its metrics.
        maxsize: the most entries kept; adding one more evicts the least recently used.
    """

    __slots__ = (
        "__weakref__",
        "_count_hit",
        "_data",
        "_hits",
        "_lock",
        "_reported",
        "evictions",
        "maxsize",
        "misses",
        "name",
    )

    def __init__(self, name: str, maxsize: int) -> None:
        if not name or maxsize < 1:
            raise ValueError("a memo needs a name and a bound of at least one entry")
        self.name = name
        self.maxsize = maxsize
        self.misses = self.evictions = 0
        #: hits are counted by ``next()`` on a C iterator: atomic under the GIL, no lock needed
        self._hits = itertools.count()
        self._count_hit = self._hits.__next__
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._reported = (0, 0, 0)  # what publish_memos has already exported
        with _REGISTRY_LOCK:
            _REGISTRY.setdefault(name, weakref.WeakSet()).add(self)

    def __repr__(self) -> str:
        return f"<Memo {self.name} {len(self._data)}/{self.maxsize}>"

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is kept (not counted, does not refresh it)."""
        return key in self._data

    @property
    def hits(self) -> int:
        return int(repr(self._hits)[6:-1])  # "count(<n>)": the next value is the number taken

    def get(self, key: K, default: Any = None) -> V | Any:
        """The value kept for ``key`` (now the most recently used), else ``default``."""
        data = self._data
        value = data.get(key, MISSING)
        if value is MISSING:
            with self._lock:
                self.misses += 1
            return default
        try:  # noqa: SIM105 - no `with` on this path: it costs more than the lookup
            data.move_to_end(key)
        except KeyError:  # evicted by another thread since the read: the value is still right
            pass
        self._count_hit()
        return value

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` for ``key`` (evicting the least recently used entry when full) and
        return it."""
        with self._lock:
            data = self._data
            if key in data:
                data.move_to_end(key)
            elif len(data) >= self.maxsize:
                data.popitem(last=False)
                self.evictions += 1
            data[key] = value
        return value

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """The value for ``key``, computed by ``compute()`` (outside the lock) on a miss and kept.
        Two threads missing at once may both compute; the later value is kept."""
        value = self.get(key, MISSING)
        if value is MISSING:
            value = self.put(key, compute())
        return value

    def peek(self, key: K, default: Any = None) -> V | Any:
        """The value kept for ``key``, else ``default``, neither counted nor refreshed."""
        return self._data.get(key, default)

    def __iter__(self) -> Iterator[K]:
        """The keys kept, least recently used first (a snapshot; not counted)."""
        with self._lock:
            return iter(list(self._data))

    def pop(self, key: K, default: Any = None) -> V | Any:
        """Forget ``key`` (an invalidation; not counted as an eviction)."""
        with self._lock:
            return self._data.pop(key, default)

    def clear(self) -> None:
        """Forget everything (not counted as evictions)."""
        with self._lock:
            self._data.clear()

    def stats(self) -> MemoStats:
        with self._lock:
            return MemoStats(self.hits, self.misses, self.evictions, len(self._data))

    def unreported(self) -> tuple[int, int, int]:
        """Hits, misses and evictions since the previous call (the metrics exporter's)."""
        with self._lock:
            now = (self.hits, self.misses, self.evictions)
            before, self._reported = self._reported, now
        return now[0] - before[0], now[1] - before[1], now[2] - before[2]


def memoize(name: str, maxsize: int) -> Callable[[F], F]:
    """Decorator: memoise a pure function in a :class:`Memo` named ``name``, keyed by its
    arguments (positional and keyword, which must be hashable). The wrapper has ``memo`` and
    ``cache_clear()`` (the name the standard library's memo decorators use)."""

    def decorator(fn: F) -> F:
        memo: Memo[Any, Any] = Memo(name, maxsize)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = (*args, MISSING, *kwargs.items()) if kwargs else args  # MISSING: no argument's value
            value = memo.get(key, MISSING)
            if value is MISSING:
                value = memo.put(key, fn(*args, **kwargs))
            return value

        wrapper.memo = memo  # type: ignore[attr-defined]
        wrapper.cache_clear = memo.clear  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def registered() -> dict[str, list[Memo[Any, Any]]]:
    """Every live memo of the process, by name."""
    with _REGISTRY_LOCK:
        return {name: list(memos) for name, memos in sorted(_REGISTRY.items()) if len(memos)}
