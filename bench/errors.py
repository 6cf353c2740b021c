"""Errors the user can act on: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """A mistake in what the user asked for (bad name, bad value, missing file)."""


class PluginError(Exception):
    """A plugin failed to load or registered something it may not."""
