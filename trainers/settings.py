"""What every settings model shares, for the trainer's config and a study's spec alike: the strict
base model (unknown keys are errors, settings never change once validated); reading YAML (no
aliases), ``${ENV}`` expansion in path settings and ``key=value`` overrides; errors as one line per
field path (``ConfigError``, ``print_errors``: exit code 2); nested dicts by dotted key
(``deep_merge``, ``dotted``, ``lookup``); and whether validation checks that the files a config
names exist.

Files are checked by default. ``with files_unchecked():`` validates everything else only, for a
config meant for another machine (``python -m study.run SPEC --dry-run`` on a laptop for a GPU
node's model and data); the block yields the list of paths that were not looked at.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from trainers.plugins import PluginError, load_plugins, resolve


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def omit_empty(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """A dump without the optional ``keys`` that are empty, so a config written before they
    existed keeps its hash (for a ``model_serializer(mode="wrap")``)."""
    for key in keys:
        if key in data and not data[key]:
            del data[key]
    return data


_checking: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("unchecked_paths", default=None)


@contextlib.contextmanager
def files_unchecked() -> Iterator[list[Path]]:
    """Within the block, ``must_exist`` lets missing paths through and collects them in the yielded list."""
    skipped: list[Path] = []
    token = _checking.set(skipped)
    try:
        yield skipped
    finally:
        _checking.reset(token)


def must_exist(path: Path, what: str) -> None:
    """Raise ValueError(``what``) when ``path`` is missing, unless inside ``files_unchecked()``."""
    if path.exists():
        return
    skipped = _checking.get()
    if skipped is None:
        raise ValueError(what)
    if path not in skipped:
        skipped.append(path)


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, nested dicts merged key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dotted(key: str, value: Any) -> dict[str, Any]:
    """``dotted("lead.weighting.beta", 0.9)`` -> ``{"lead": {"weighting": {"beta": 0.9}}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def lookup(config: dict[str, Any], key: str) -> Any:
    """``lookup(config, "lead.weighting.beta")`` -> ``config["lead"]["weighting"]["beta"]``."""
    for part in key.split("."):
        config = config[part]
    return config


def _field_path(loc: tuple, prefix: str) -> str:
    """``("arms", 1, "weighting", "w_corr")`` -> ``arms[1].weighting.w_corr``."""
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def format_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per failing field path (``arms[1].weighting.w_corr: ...``); a union's alternatives
    that fail on the same path give one line, not one per alternative."""
    lines = []
    for detail in error.errors():
        path = _field_path(detail["loc"], prefix)
        message = "unknown key" if detail["type"] == "extra_forbidden" else detail["msg"].removeprefix("Value error, ")
        line = f"{path}: {message}" if path else message
        if line not in lines:
            lines.append(line)
    return lines


def format_error(error: ValidationError, prefix: str = "") -> str:
    """The first line of ``format_errors``."""
    return format_errors(error, prefix)[0]


class ConfigError(ValueError):
    """Config problems, each already phrased as one line naming the file and field (``lines``)."""

    def __init__(self, lines: str | list[str]):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


def print_errors(error: Exception) -> int:
    """Print each line of ``error`` as ``error: ...`` on stderr; returns the CLI exit code, 2."""
    for line in str(error).splitlines():
        print(f"error: {line}", file=sys.stderr)
    return 2


# ``${NAME}`` / ``${NAME:-default}`` expand only in settings that hold paths: a secret never reaches
# a prompt, a tag or an MLflow param by way of the environment.
ENV_KEYS = frozenset({"path", "cache_dir", "train_files", "eval_files", "plugins"})
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(data: Any, path: Path, where: str = "", key: str = "") -> Any:
    """``${NAME}`` and ``${NAME:-default}`` in path settings (``ENV_KEYS``), from the environment
    (machine-specific paths in a shared spec); an unset name without a default, or ``${...}``
    anywhere else, is a ConfigError naming the key."""
    if isinstance(data, dict):
        return {k: expand_environment(v, path, f"{where}.{k}" if where else str(k), str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_environment(v, path, f"{where}[{i}]", key) for i, v in enumerate(data)]
    if not isinstance(data, str) or not _ENV.search(data):
        return data
    if key not in ENV_KEYS:
        raise ConfigError(f"{path}: {where}: ${{...}} expands only in path settings ({', '.join(sorted(ENV_KEYS))})")

    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{path}: {where}: environment variable {name} is not set")
        return default

    return _ENV.sub(value, data)


def read_yaml(path: Path) -> Any:
    """A YAML file's data, or ConfigError in one line: unreadable, not UTF-8, not YAML, or using
    aliases (``*name``: a loop or an alias bomb would hang or crash whatever walks the data)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1
                raise ConfigError(f"{path}: line {line}: YAML aliases (*{event.anchor}) are not supported; "
                                  "write the settings out (a spec's base: holds what arms share)")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None


OVERRIDE_KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")


def parse_override(text: str) -> tuple[str, Any]:
    """``train.steps=30`` -> ``("train.steps", 30)``: a dotted key into the settings' mappings, and a
    value read as YAML (``[0, 1]``, ``3.0e-4``, ``true``, ``{kind: static}``; a list is set whole)."""
    key, equals, value = text.partition("=")
    if not equals or not OVERRIDE_KEY.fullmatch(key):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. train.steps=30")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: the value is not YAML: {str(exc).splitlines()[0]}") from None


def with_overrides(data: dict, overrides: list[str]) -> dict:
    """``data`` with each ``KEY=VALUE`` override merged in, in order (``parse_override``); every
    malformed override is named, one line each."""
    errors = []
    for text in overrides:
        try:
            data = deep_merge(data, dotted(*parse_override(text)))
        except ConfigError as exc:
            errors += exc.lines
    if errors:
        raise ConfigError(errors)
    return data


def load_validated(path: str | Path, model: type[BaseModel], overrides: list[str] = ()):
    """Read a YAML mapping, apply ``KEY=VALUE`` overrides, and validate it as ``model``; problems
    raise ConfigError, one line each, naming the file (and the overridden key where it is one)."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    data = with_overrides(expand_environment(data, path), list(overrides))
    if isinstance(data.get("plugins"), list):  # a plugin file is named relative to the YAML that names it
        data["plugins"] = [resolve(p, path.parent) if isinstance(p, str) else p for p in data["plugins"]]
    try:
        return model.model_validate(with_plugins(data))
    except PluginError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError([f"{path}: {line}" for line in format_errors(exc)]) from None


def with_plugins(data: dict) -> dict:
    """Import the plugins a config or spec names (a relative ``.py`` path against the working
    directory; a YAML's own are made absolute against its folder when it is read), once, before its
    settings are validated, so they can name what the plugins register; ``data``, paths resolved.
    Raises PluginError (one line naming each that fails)."""
    plugins = data.get("plugins")
    if not plugins:
        return data
    plugins = [resolve(p, Path.cwd()) if isinstance(p, str) else p for p in plugins] if isinstance(plugins, list) else plugins
    load_plugins(plugins)
    return {**data, "plugins": plugins}
