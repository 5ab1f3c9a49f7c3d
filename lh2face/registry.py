"""A name -> builder registry; one `type:`/name key chooses heads, backbones and renderer backends."""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterable, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to builder callables.

    >>> HEADS = Registry("head")
    >>> @HEADS.register("cosface")
    ... def build_cosface(**kw): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: Dict[str, Callable[..., T]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            for name in names:
                key = name.lower()
                if key in self._builders and self._builders[key] is not fn:
                    raise KeyError(f"{self.kind} '{name}' is registered twice")
                self._builders[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        key = str(name).lower()
        if key not in self._builders:
            known = ", ".join(sorted(self._builders)) or "(none registered)"
            raise KeyError(f"unknown {self.kind} '{name}'; known {self.kind}s: {known}")
        return self._builders[key]

    def build(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> Iterable[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return str(name).lower() in self._builders
