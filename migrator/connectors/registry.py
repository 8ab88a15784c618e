"""Which connector serves which `kind`; one line per connector."""

from __future__ import annotations

from collections.abc import Callable

from migrator.config import EndpointConfig
from migrator.connectors.base import Endpoint
from migrator.connectors.graph import GraphEndpoint
from migrator.connectors.imap import ImapEndpoint
from migrator.errors import UserError

CONNECTORS: dict[str, Callable[[EndpointConfig], Endpoint]] = {
    "imap": ImapEndpoint,
    "graph": GraphEndpoint,
}


def make_endpoint(config: EndpointConfig) -> Endpoint:
    """The connector for `config.kind`; UserError if this build has none for it."""
    factory = CONNECTORS.get(config.kind)
    if factory is None:
        raise UserError(f"[{config.role}].kind = {config.kind!r}: no connector for this kind in this version "
                        f"(available: {', '.join(sorted(CONNECTORS))})")
    return factory(config)
