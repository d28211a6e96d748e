"""One registry for every extension point: length rewards, weightings, advantage normalizations,
tasks, rollout engines, training backends (here, in ``trainers/``) and search modes (``study/``).

    ENGINES = Registry("rollout engine", modules={"hf": "trainers.rollout.hf", "vllm": "trainers.rollout.vllm"})

    @ENGINES.register("hf")
    class HFRolloutEngine: ...

    ENGINES["hf"]          # the entry (its module is imported the first time the name is asked for)
    "hf" in ENGINES        # registered, or known by module
    ENGINES.names()        # every name a config may use

A registry maps names to entries. ``modules`` names the module that registers a built-in entry, so
a heavy one (vLLM, DeepSpeed) is imported only when a config asks for it. Registering a name twice
is an error (``RegistryError``), so a plugin cannot silently replace a built-in. An entry's
settings, where it has any, are a strict pydantic model it carries itself (``settings_model``
builds one from a function's keyword parameters), validated when a config is loaded, so the
error names the key path. Config validation asks the registry, so a registered entry is
selectable from YAML at once.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError, create_model
from pydantic_core import InitErrorDetails, PydanticCustomError

from trainers.settings import Strict

T = TypeVar("T")


class RegistryError(ValueError):
    """A name registered twice, or an unknown name (one line)."""


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, what: str, modules: dict[str, str] | None = None, check: Callable[[str, T], None] | None = None):
        self.what = what  # "length reward", "rollout engine", ...: how errors name an entry
        self.modules = dict(modules or {})  # built-in name -> the module that registers it
        self.check = check  # raises RegistryError when an entry does not fit the extension point
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name already taken, or an entry that ``check``
        refuses, is a RegistryError."""
        if name in self._entries:
            raise RegistryError(f"a {self.what} named {name!r} is already registered")
        if self.check is not None:
            self.check(name, entry)
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` above a function or class registers it as it is."""
        return lambda entry: self.add(name, entry)

    def names(self) -> list[str]:
        """Every selectable name: registered, or registered by a known module once imported."""
        return sorted({*self._entries, *self.modules})

    def registered(self) -> list[str]:
        """The names registered so far, in the order they were registered."""
        return list(self._entries)

    def unknown(self, name: str) -> str:
        """The one-line message for a name this registry does not know."""
        return f"unknown {self.what} {name!r} (known: {', '.join(self.names())})"

    def __getitem__(self, name: str) -> T:
        if name not in self._entries and name in self.modules:
            importlib.import_module(self.modules[name])
        if name not in self._entries:
            raise KeyError(self.unknown(name))
        return self._entries[name]

    def known(self, name: str) -> str:
        """``name``, if this registry knows it; else ValueError (a pydantic ``AfterValidator``)."""
        if name not in self:
            raise ValueError(self.unknown(name))
        return name

    @property
    def Name(self):  # noqa: N802 (a type): a str field that must name an entry, ``engine: ENGINES.Name = "hf"``
        return Annotated[str, AfterValidator(self.known)]

    def settings_of(self, data: Any, base: type, default: str, key: str = "kind"):
        """An entry's settings for a registry of settings models (``kind_model``): ``data`` as it is
        if it already is one (a ``base``), else the mapping validated by the model its ``key`` names
        (``default`` when it names none). A setting that only other entries take is one line naming them."""
        if isinstance(data, base):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of {self.what} settings with a {key}")
        name = data.get(key, default)
        model = self.lookup(name)
        misplaced = []
        for field in (f for f in data if f not in model.model_fields):
            takers = [other for other in self.registered() if field in self[other].model_fields]
            if takers:
                message = f"only used with {self.what} {' or '.join(takers)} ({key} is {name})"
                misplaced.append(InitErrorDetails(type=PydanticCustomError("other_entry", message), loc=(field,),
                                                  input=data[field]))
        if misplaced:
            raise ValidationError.from_exception_data(model.__name__, misplaced)
        return model.model_validate(data)

    def check_options(self, name: str, options: dict[str, Any], key: str) -> None:
        """Check an entry's own settings (``options``, found at ``key``) against the strict model the
        entry declares as ``Settings`` (none declared: it takes none); ValueError names the key. The
        entry is imported only when options are given."""
        if not options:
            return
        model = getattr(self.lookup(name), "Settings", None)
        if model is None:
            raise ValueError(f"{key}: the {self.what} {name!r} takes no options")
        try:
            model.model_validate(options)
        except ValidationError as exc:
            raise ValueError(first_error(exc, key)) from None

    def lookup(self, name: str) -> T:
        """``self[name]``, with an unknown name as a ValueError (inside a pydantic validator: a
        validation error at that key's path)."""
        try:
            return self[name]
        except KeyError:
            raise RegistryError(self.unknown(name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.modules

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __delitem__(self, name: str) -> None:  # tests that register a temporary entry remove it
        del self._entries[name]


def first_error(error: ValidationError, key: str) -> str:
    """An entry's settings error as one line under ``key``: ``length_params.scale: Input should be ...``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{key}.{where}: {'unknown key' if first['type'] == 'extra_forbidden' else first['msg']}"


def settings_model(name: str, fn: Callable) -> type[BaseModel]:
    """A strict pydantic model of ``fn``'s keyword-only parameters (their annotations and defaults)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields = {
        p.name: (hints[p.name], ... if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return create_model(f"{name}_settings", __base__=Strict, **fields)


def kind_model(base: type[BaseModel], key: str = "kind") -> Callable[[str, object], None]:
    """A registry ``check`` for entries registered as their settings model: a subclass of ``base``
    whose ``key`` field (``kind``) defaults to the name it is registered under (so ``kind: NAME`` selects it)."""

    def check(name: str, entry: object) -> None:
        if not (isinstance(entry, type) and issubclass(entry, base)):
            raise RegistryError(f"{name!r}: register a subclass of {base.__module__}.{base.__name__}")
        field = entry.model_fields.get(key)
        if field is None or field.default != name:
            raise RegistryError(f"{name!r}: declare {key}: Literal[{name!r}] = {name!r}")

    return check
