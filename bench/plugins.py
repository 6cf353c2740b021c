"""Load plugins (built-in, entry points, local files) and collect what they register.

Each plugin's hooks are called one at a time so that a plugin that fails, or registers a
name that is taken, is reported by name and does not stop the others.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from importlib.metadata import entry_points
from pathlib import Path

import pluggy

from bench import hookspecs
from bench.errors import UserError
from bench.registry import KINDS, Registry

ENTRY_POINT_GROUP = "sampler_bench"
PLUGINS_ENV = "SAMPLER_BENCH_PLUGINS"  # os.pathsep-separated .py files
DEFAULT_PLUGINS = (
    "samplers.ancestral",
    "samplers.ddim",
    "samplers.karras",
    "samplers.dpm_solver",
    "samplers.unipc", "samplers.deis", "samplers.pndm", "samplers.flow", "samplers.kdiffusion", "samplers.adaptive",
    "models.oracle",
    "models.builtin",
    "models.metrics",
)
HOOKS = {"register_samplers": "sampler", "register_presets": "preset",
         "register_models": "model", "register_metrics": "metric"}


def _load_file(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"plugin file {str(path)!r} does not exist")
    module_name = f"sampler_bench_plugin_{path.stem}_{abs(hash(str(path.resolve()))):x}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plugin_files(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Local plugin files from the environment variable, then from --plugin."""
    from_env = [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]
    return from_env + list(extra)


def make_manager(files: list[str] | tuple[str, ...] = (), errors: list[str] | None = None,
                 include_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager holding the built-ins, installed entry points and local files."""
    errors = errors if errors is not None else []
    pm = pluggy.PluginManager("sampler_bench")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        try:
            pm.register(importlib.import_module(module_name), name=module_name)
        except Exception as exc:  # a broken built-in is reported like any other plugin
            errors.append(f"plugin {module_name!r} failed to load: {type(exc).__name__}: {exc}")
    if include_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                pm.register(ep.load(), name=f"{ep.name} ({ep.value})")
            except Exception as exc:
                errors.append(f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}")
    for path in plugin_files(files):
        try:
            pm.register(_load_file(path), name=str(path))
        except UserError as exc:
            errors.append(str(exc))
        except Exception as exc:
            errors.append(f"plugin file {path!r} failed to load: {type(exc).__name__}: {exc}")
    return pm


def collect(pm: pluggy.PluginManager, errors: list[str] | None = None) -> Registry:
    """Call every plugin's hooks and build the registry, attributing each entry to its plugin."""
    registry = Registry(errors=list(errors or []))
    registry.plugins = [pm.get_name(p) for p in pm.get_plugins()]
    for hook_name, kind in HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin_name = impl.plugin_name
            table = registry.table(kind)

            def register(item, _kind=kind, _table=table, _plugin=plugin_name, _hook=hook_name):
                expected = KINDS[_kind]
                if not isinstance(item, expected):
                    raise TypeError(f"register() in {_hook} expects a {expected.__name__}, "
                                    f"got {type(item).__name__}")
                if item.name in _table:
                    registry.errors.append(
                        f"plugin {_plugin!r} registers {_kind} {item.name!r}, which plugin "
                        f"{_table[item.name].plugin!r} already registered; ignored")
                    return
                _table[item.name] = dataclasses.replace(item, plugin=_plugin)

            try:
                impl.function(register=register)
            except Exception as exc:
                registry.errors.append(f"plugin {plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}")
    for preset in list(registry.presets.values()):
        clash = preset.name in registry.samplers
        if clash or preset.sampler not in registry.samplers:
            reason = "shares a sampler's name" if clash else f"refers to unknown sampler {preset.sampler!r}"
            registry.errors.append(f"preset {preset.name!r} from plugin {preset.plugin!r} {reason}; ignored")
            del registry.presets[preset.name]
            continue
        try:
            registry.samplers[preset.sampler].resolve_params(preset.params)
        except UserError as exc:
            registry.errors.append(f"preset {preset.name!r} from plugin {preset.plugin!r}: {exc}; ignored")
            del registry.presets[preset.name]
    return registry


def load_registry(files: list[str] | tuple[str, ...] = ()) -> Registry:
    """Everything registered by built-ins, installed plugins and local plugin files."""
    errors: list[str] = []
    pm = make_manager(files, errors)
    return collect(pm, errors)
