"""A simulated Microsoft cloud for tests: one identity platform, Graph tenants, and projects that migrate
between them and real Dovecot servers through the real `migrator` command.

The simulators run in the test process (threads); `migrator` runs in a subprocess and reaches them over
HTTPS on loopback, trusting the test CA through the endpoint's `ca_file` only.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from migrator.config import EndpointConfig
from migrator.connectors.graph import GraphEndpoint
from migrator.connectors.graph.mailbox import KEPT_SYSTEM_FLAGS
from migrator.connectors.graph.mime import LAST_VERB_PROPERTY
from migrator.lab.corpus import CorpusMessage, mailbox_snapshot
from migrator.lab.dovecot import DovecotServer, LabUser
from migrator.model import Capabilities
from tests.contract import content_key
from tests.mssim.graph import GraphSimulator
from tests.mssim.identity import IdentityPlatform
from tests.mssim.tls import TestCA

GRAPH_AUDIENCE = "https://graph.microsoft.com"
BATCH = "POST /$batch"  # the simulator's request counter key of a JSON batch
EXCHANGE_FLAGS = Capabilities(system_flags=KEPT_SYSTEM_FLAGS, atom_keywords=False)
# Where the corpus's IMAP folders land in an Exchange mailbox (role folders by their Exchange names).
EXCHANGE_NAMES = {"INBOX": "Inbox", "Sent": "Sent Items", "Trash": "Deleted Items", "Junk": "Junk Email",
                  "Drafts": "Drafts", "Archive": "Archive"}


@dataclass
class Tenant:
    """One Exchange Online organisation: its simulated Graph and the app registered for migrator."""

    role: str
    tenant_id: str
    client_id: str
    secret: str
    graph: GraphSimulator
    identity: IdentityPlatform
    ca: TestCA

    @property
    def secret_env(self) -> str:
        return f"{self.role.upper()}_CLIENT_SECRET"

    def config_block(self, extra: str = "") -> str:
        return (f'[{self.role}]\nkind = "graph"\ntenant_id = "{self.tenant_id}"\nclient_id = "{self.client_id}"\n'
                f'client_secret_env = "{self.secret_env}"\nauthority = "{self.identity.authority(self.tenant_id)}"\n'
                f'base_url = "{self.graph.base_url}"\nca_file = "{self.ca.ca_path}"\n{extra}\n')


@dataclass
class Cloud:
    ca: TestCA
    identity: IdentityPlatform
    stack: ExitStack
    tenants: list[Tenant] = field(default_factory=list)

    def tenant(self, role: str, **graph_options: Any) -> Tenant:
        tenant_id, client_id, secret = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex
        self.identity.register_app(tenant_id, client_id, secret=secret)

        def validate(token: str) -> dict[str, Any]:
            return self.identity.validate(token, GRAPH_AUDIENCE, tenant_id)

        graph = self.stack.enter_context(GraphSimulator(self.ca, validate, **graph_options))
        tenant = Tenant(role, tenant_id, client_id, secret, graph, self.identity, self.ca)
        self.tenants.append(tenant)
        return tenant


@pytest.fixture
def cloud(lab_root: Path) -> Iterator[Cloud]:
    ca = TestCA(lab_root / "ca")
    with ExitStack() as stack:
        identity = stack.enter_context(IdentityPlatform(ca))
        yield Cloud(ca, identity, stack)


ONE_MAILBOX = "carol@example.org"
ONE_MAILBOX_SECRET_ENV = "GRAPH_ONE_MAILBOX_SECRET"
OneMailbox = Callable[..., tuple[GraphEndpoint, GraphSimulator]]


def graph_config(tenant: Tenant, *, base_url: str | None = None, secret_env: str = "CONTRACT_SECRET") -> EndpointConfig:
    options = {"tenant_id": tenant.tenant_id, "client_id": tenant.client_id,
               "authority": tenant.identity.authority(tenant.tenant_id), "base_url": base_url or tenant.graph.base_url}
    return EndpointConfig("target", "graph", "", 443, "tls", None, None, tenant.ca.ca_path, False, 10.0,
                          options | {"client_secret_env": secret_env})


@pytest.fixture
def one_mailbox_tenant(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> OneMailbox:
    """A tenant (simulator options as keywords) with the mailbox ONE_MAILBOX, and the connector on it."""

    def make(**graph_options: Any) -> tuple[GraphEndpoint, GraphSimulator]:
        tenant = cloud.tenant("target", **graph_options)
        tenant.graph.add_user(ONE_MAILBOX)
        monkeypatch.setenv(ONE_MAILBOX_SECRET_ENV, tenant.secret)
        return GraphEndpoint(graph_config(tenant, secret_env=ONE_MAILBOX_SECRET_ENV)), tenant.graph

    return make


def exchange_path(imap_folder: str) -> str:
    """The Exchange folder path the corpus folder `imap_folder` ("." separated) maps to."""
    parts = imap_folder.split(".")
    parts[0] = EXCHANGE_NAMES.get(parts[0], parts[0])
    return "/".join(parts)


def seed_graph(graph: GraphSimulator, address: str, corpus: dict[tuple[str, ...], list[CorpusMessage]],
               **user: Any) -> int:
    """Deliver a generated corpus into a simulated mailbox (as Exchange would: not drafts); `user` options go
    to `add_user` (forwarding_to, auto_reply, ...)."""
    graph.add_user(address, **user)
    count = 0
    for path, messages in corpus.items():
        folder = "/".join([EXCHANGE_NAMES.get(path[0], path[0]), *path[1:]])
        graph.add_folder(address, folder)
        for mail in messages:
            graph.add_message(address, folder, mail.raw, received=mail.date, is_read="\\Seen" in mail.flags,
                              flagged="\\Flagged" in mail.flags,
                              categories=[f for f in mail.flags if not f.startswith("\\")])
            count += 1
    return count


def graph_contents(graph: GraphSimulator, address: str, kept_by: Capabilities | None = None
                   ) -> dict[str, Counter[tuple[str, frozenset[str], datetime]]]:
    """Per folder path: (content fingerprint, flags as IMAP flags — as `kept_by` can carry them, received
    time) of every message."""
    result: dict[str, Counter[tuple[str, frozenset[str], datetime]]] = {}
    for path in graph.folders(address):
        result[path] = Counter((content_key(graph.mime(address, m.id)),
                                kept_by.storable_flags(graph_flags(m)) if kept_by else graph_flags(m), m.received)
                               for m in graph.messages(address, path))
    return result


def graph_flags(message: Any) -> frozenset[str]:
    """A simulated item's state in IMAP terms (what the connector's flags_from_graph reads)."""
    flags = set(message.categories)
    if message.is_read:
        flags.add("\\Seen")
    if message.flag_status == "flagged":
        flags.add("\\Flagged")
    if message.is_draft:
        flags.add("\\Draft")
    verbs = {key.lower(): value for key, value in message.extended.items()}
    if verbs.get(LAST_VERB_PROPERTY.lower()) in ("102", "103"):
        flags.add("\\Answered")
    return frozenset(flags)


def imap_contents(server: DovecotServer, user: LabUser) -> dict[str, Counter[tuple[str, frozenset[str], datetime]]]:
    """The same view of an IMAP mailbox, folders under their Exchange paths; flags as Exchange keeps them."""
    snapshot = mailbox_snapshot(server.host, server.port, user.name, user.password, digest=content_key)
    return {exchange_path(folder): Counter((fingerprint, EXCHANGE_FLAGS.storable_flags(flags), date)
                                           for fingerprint, flags, date in messages)
            for folder, messages in snapshot.items()}


def request_counts(*graphs: GraphSimulator) -> tuple[int, int]:
    """(HTTP requests, requests counted against the mailbox budgets) the simulators saw: a `$batch` envelope is
    one HTTP request, each of its sub-requests one against the budget."""
    total = sum(sum(graph.requests.values()) for graph in graphs)
    return (total - sum(sum(graph.sub_requests.values()) for graph in graphs),
            total - sum(graph.requests[BATCH] for graph in graphs))


def reset_counts(graph: GraphSimulator) -> None:
    graph.requests.clear()
    graph.sub_requests.clear()
