"""Which connector serves which `kind`; one line per connector.

Named by module path and imported when an endpoint of that kind is made: every command starts by making its
endpoints, and importing every connector (Graph pulls in requests, msal and cryptography) for an IMAP-only
run was a fifth of the start-up.
"""

from __future__ import annotations

from importlib import import_module
from typing import cast

from migrator.config import EndpointConfig
from migrator.connectors.base import Endpoint
from migrator.errors import UserError

CONNECTORS: dict[str, str] = {
    "imap": "migrator.connectors.imap:ImapEndpoint",
    "graph": "migrator.connectors.graph:GraphEndpoint",
}


def make_endpoint(config: EndpointConfig) -> Endpoint:
    """The connector for `config.kind`; UserError if this build has none for it."""
    where = CONNECTORS.get(config.kind)
    if where is None:
        raise UserError(f"[{config.role}].kind = {config.kind!r}: no connector for this kind in this version "
                        f"(available: {', '.join(sorted(CONNECTORS))})")
    module, _, name = where.partition(":")
    return cast(Endpoint, getattr(import_module(module), name)(config))
