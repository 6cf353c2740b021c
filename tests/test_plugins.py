"""The plugin system: the README example, entry points, local files, and broken plugins."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import plugins
from bench.plugins import collect, load_registry, make_manager
from tests.helpers import run_sampler

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_plugin_source() -> str:
    """The python block under 'Write your own sampler' in the README, exactly as users copy it."""
    section = README.read_text().split("## Write your own sampler", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def readme_plugin(tmp_path):
    path = tmp_path / "my_sampler.py"
    path.write_text(readme_plugin_source())
    return path


def test_the_readme_example_registers_and_matches_ddim(readme_plugin, oracle):
    registry = load_registry([str(readme_plugin)])
    assert registry.errors == [] or all("models.builtin" not in e and "my_sampler" not in e for e in registry.errors)
    mine = registry.samplers["my-ddim"]
    assert mine.plugin == str(readme_plugin)
    ddim = registry.samplers["ddim"]
    a, _ = run_sampler(mine, mine.resolve_params(), oracle, 20, torch.arange(8), dtype=torch.float64)
    b, _ = run_sampler(ddim, ddim.resolve_params(), oracle, 20, torch.arange(8), dtype=torch.float64)
    assert torch.allclose(a, b, atol=1e-10)


def test_the_environment_variable_loads_plugin_files(readme_plugin, monkeypatch):
    monkeypatch.setenv(plugins.PLUGINS_ENV, str(readme_plugin))
    assert "my-ddim" in load_registry().samplers


def test_a_plugin_that_fails_to_import_is_named_and_the_others_still_load(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    registry = load_registry([str(broken)])
    assert any("broken.py" in e and "boom" in e for e in registry.errors)
    assert "ddpm" in registry.samplers and "gaussian-oracle" in registry.models


def test_a_plugin_that_registers_a_taken_name_is_reported_and_ignored(tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text(
        "from bench import SamplerSpec, hookimpl\n"
        "@hookimpl\n"
        "def register_samplers(register):\n"
        "    register(SamplerSpec('ddim', lambda *a, **k: None, 'impostor'))\n"
        "    register(SamplerSpec('fine-one', lambda *a, **k: None, 'ok'))\n")
    registry = load_registry([str(clash)])
    assert registry.samplers["ddim"].plugin == "samplers.ddim"
    assert "fine-one" in registry.samplers
    assert any("clash.py" in e and "'ddim'" in e and "samplers.ddim" in e for e in registry.errors)


def test_a_plugin_whose_hook_raises_is_reported(tmp_path):
    bad = tmp_path / "hook_raises.py"
    bad.write_text("from bench import hookimpl\n@hookimpl\ndef register_samplers(register):\n    1 / 0\n")
    registry = load_registry([str(bad)])
    assert any("hook_raises.py" in e and "ZeroDivisionError" in e for e in registry.errors)
    assert "ddpm" in registry.samplers


def test_entry_point_plugins_are_loaded(monkeypatch, readme_plugin):
    import importlib.util
    spec = importlib.util.spec_from_file_location("ep_plugin", readme_plugin)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fake = SimpleNamespace(name="mine", value="ep_plugin", load=lambda: module)
    broken = SimpleNamespace(name="broken", value="nowhere", load=lambda: (_ for _ in ()).throw(ImportError("x")))
    monkeypatch.setattr(plugins, "entry_points", lambda group: [fake, broken])
    errors: list[str] = []
    registry = collect(make_manager((), errors), errors)
    assert registry.samplers["my-ddim"].plugin.startswith("mine")
    assert any("'broken'" in e for e in registry.errors)


def test_builtins_come_through_the_plugin_manager_like_any_plugin():
    registry = load_registry()
    assert registry.samplers["ddpm"].plugin == "samplers.ancestral"
    assert registry.models["gaussian-oracle"].plugin == "models.oracle"
    assert set(plugins.DEFAULT_PLUGINS) <= set(registry.plugins)


def test_the_seed_samplers_are_all_registered():
    registry = load_registry()
    names = set(registry.samplers) | set(registry.presets)
    assert {"ddpm", "ddpm-large", "stride-uniform", "stride-quadratic", "stride", "ddim", "ddim-eta0.5",
            "ddim-eta1", "ddim-sigma-hat"} <= names
