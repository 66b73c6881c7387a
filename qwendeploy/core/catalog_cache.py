"""The packaged catalogs (gpus.yaml, models.yaml) remembered between runs, when the command line asks for it.

Reading a catalog means parsing its YAML, validating it with pydantic and building the frozen values the lookups
use: ~40 ms of every ``plan`` before a cache, against ~2 ms to unpickle the result. The core stays pure: it calls
:func:`load` with the catalog's text and the function that builds it; only when a :class:`CatalogCache` has been
installed (``qwendeploy.cli.main`` installs the file cache of :mod:`qwendeploy.adapters.catalog_cache`) is anything
remembered. Without one (the library, the tests) every process builds its catalogs, exactly as before.

A cache answers only for the exact text and code that built the value (the adapter keys it by both), and
anything it returns that is not of the expected type is ignored; the value is then built and offered back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class CatalogCache(Protocol):
    """Where built catalogs are kept between processes."""

    def get(self, name: str, text: str) -> object | None:
        """The value built earlier from exactly ``text`` by this code, or None (never raises)."""

    def put(self, name: str, text: str, value: object) -> None:
        """Remember ``value`` as built from ``text``; best effort (never raises)."""


_installed: list[CatalogCache] = []
"""The cache in use (none, or one): set once by the command line's entry point."""


def install(cache: CatalogCache | None) -> None:
    """Use ``cache`` for the catalogs read from now on (None: build every catalog in this process)."""
    _installed[:] = [] if cache is None else [cache]


def load(name: str, text: str, build: Callable[[str], T], kind: type[T]) -> T:
    """The catalog ``name`` built from ``text`` by ``build``, from the installed cache when it holds it.

    Raises:
        whatever ``build`` raises for a malformed catalog (a bad catalog is never remembered).
    """
    if not _installed:
        return build(text)
    cache = _installed[0]
    kept = cache.get(name, text)
    if isinstance(kept, kind):
        return kept
    value = build(text)
    cache.put(name, text, value)
    return value
