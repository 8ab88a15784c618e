"""Simulators of the Microsoft cloud services migrator talks to (identity platform, Microsoft Graph), which
cannot run here. Each reproduces the documented behaviour the connectors rely on; docstrings cite it."""
