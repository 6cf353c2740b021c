"""Sampling algorithms: small functions registered through the plugin hooks."""
