"""Connectors: one module per kind of endpoint, all behind the protocols in base.py."""
