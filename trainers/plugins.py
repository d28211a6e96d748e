"""Plugins: a user's own length rewards, weightings, normalizations, tasks, engines or backends,
from files outside the package.

A spec or a trainer config lists them::

    plugins: [my_rewards.py, my_package.weightings]   # .py files (relative to the YAML) or module names

and each is imported before anything is validated, in the driver and again in every trial's
process, so what it registers (``@register_length_reward``, ``@register_weighting``, ...) is
selectable from the same YAML. Importing a plugin twice in one process is a no-op. A plugin that
fails to import, or registers a name that is taken, is one ``PluginError`` line naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

_LOADED: dict[str, str] = {}  # plugin (absolute path or module name) -> module name in sys.modules


class PluginError(ValueError):
    """A plugin that cannot be imported, in one line naming it."""


def resolve(plugin: str, base_dir: Path) -> str:
    """A ``.py`` path made absolute against ``base_dir`` (where the YAML naming it lives); a module
    name as it is."""
    if plugin.endswith(".py"):
        return str((base_dir / Path(plugin).expanduser()).resolve())
    return plugin


def load_plugin(plugin: str) -> str:
    """Import one plugin (an absolute ``.py`` path or a module name); returns its module's name."""
    if plugin in _LOADED:
        return _LOADED[plugin]
    try:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_file():
                raise PluginError(f"{plugin}: no such file")
            name = f"lead_study_plugin_{path.stem}_{hashlib.sha256(plugin.encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            name = importlib.import_module(plugin).__name__
    except PluginError:
        raise
    except Exception as exc:  # the plugin's own error, whatever it is: one line naming the plugin
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PluginError(f"{plugin}: cannot import: {type(exc).__name__}: {first}") from None
    _LOADED[plugin] = name
    return name


def load_plugins(plugins: list[str]) -> None:
    """Import every plugin in order; those that fail raise one PluginError naming each by its
    place in the list (``plugins[1]: ...; plugins[3]: ...``)."""
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise PluginError(f"plugins: expected a list of .py files or module names, got {plugins!r}")
    failed = []
    for i, plugin in enumerate(plugins):
        try:
            load_plugin(plugin)
        except PluginError as exc:
            failed.append(f"plugins[{i}]: {exc}")
    if failed:
        raise PluginError("; ".join(failed))
