"""Method registry: ``@register("name")`` on a ContinualMethod subclass; ``get``/``names``/``build``.

Registration happens on import: every module and sub-package of ``methods`` is imported once, so a
new method is one new file with ``@register``. A name that is not registered gets an error listing
every valid one (timm's registry style)."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
import typing
from typing import Any, Callable

from methods.base import ContinualMethod, MethodContext, MethodHParams

_REGISTRY: dict[str, type[ContinualMethod]] = {}
_loaded = False


class MethodError(ValueError):
    """Unknown method or bad hyper-parameter; the CLI prints it and exits 2."""


def register(name: str) -> Callable[[type[ContinualMethod]], type[ContinualMethod]]:
    def deco(cls: type[ContinualMethod]) -> type[ContinualMethod]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise MethodError(f"method name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> type[ContinualMethod]:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; valid methods: {', '.join(sorted(_REGISTRY))}") from None


def _convert(raw: str, kind: Any, key: str, method: str) -> Any:
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if origin in (typing.Union, getattr(types, "UnionType", None)) and args:
        if raw.lower() in ("none", "null"):
            return None
        kind = args[0]
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, float, str):
            return kind(raw)
        if typing.get_origin(kind) in (tuple, list):
            inner = typing.get_args(kind)[0] if typing.get_args(kind) else str
            items = [x for x in raw.split(",") if x]
            return typing.get_origin(kind)(inner(x) for x in items)
    except ValueError:
        pass
    else:
        return raw
    raise MethodError(f"--set {key}={raw!r}: method {method!r} expects {getattr(kind, '__name__', kind)} for {key!r}.")


def hparams_for(name: str, overrides: dict[str, str] | None = None) -> MethodHParams:
    """The method's hyper-parameter dataclass with ``--set key=value`` overrides applied (typed)."""
    cls = get(name)
    fields = {f.name: f for f in dataclasses.fields(cls.HParams)}
    hints = typing.get_type_hints(cls.HParams)
    values = {}
    for key, raw in (overrides or {}).items():
        if key not in fields:
            valid = ", ".join(f"{k}={getattr(cls.HParams(), k)!r}" for k in fields) or "(none)"
            raise MethodError(f"unknown hyper-parameter {key!r} for method {name!r}; its hyper-parameters are: {valid}.")
        values[key] = _convert(str(raw), hints[key], key, name)
    hp = cls.HParams(**values)
    check = getattr(hp, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise MethodError(f"method {name!r}: {e}") from None
    return hp


def build(name: str, overrides: dict[str, str] | None = None) -> ContinualMethod:
    return get(name)(hparams_for(name, overrides))


__all__ = ["ContinualMethod", "MethodContext", "MethodHParams", "MethodError", "build", "get", "hparams_for",
           "names", "register"]
