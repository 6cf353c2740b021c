"""The plugin hooks. Each takes a `register` callback so one plugin can add many things.

Built-in samplers, models and metrics arrive through these same hooks (see
`bench.plugins.DEFAULT_PLUGINS`); nothing built in is special-cased.
"""

import pluggy

hookspec = pluggy.HookspecMarker("sampler_bench")
hookimpl = pluggy.HookimplMarker("sampler_bench")


@hookspec
def register_samplers(register):
    """Register samplers: call `register(SamplerSpec(...))` once per sampler."""


@hookspec
def register_presets(register):
    """Register named parameter presets: `register(Preset(name, sampler, params, description))`."""


@hookspec
def register_models(register):
    """Register models: `register(ModelSpec(name, description, load))`, load(device) -> Denoiser."""


@hookspec
def register_metrics(register):
    """Register metrics: `register(MetricSpec(name, description, create))`."""
