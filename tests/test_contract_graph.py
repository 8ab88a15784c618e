"""The connector contract against the Graph simulator, with msal fetching real tokens from the simulated
identity platform over TLS that only the endpoint's ca_file makes trusted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from migrator.connectors.base import open_mailbox
from migrator.connectors.graph import GraphEndpoint
from migrator.lab.dovecot import free_port
from migrator.model import Login
from tests.contract import *  # noqa: F403
from tests.contract import Contract
from tests.graph_fixtures import Cloud, graph_config

ADDRESS = "carol@example.org"


@pytest.fixture
def contract(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> Iterator[Contract]:
    tenant = cloud.tenant("target")
    tenant.graph.add_user(ADDRESS)
    monkeypatch.setenv("CONTRACT_SECRET", tenant.secret)
    endpoint = GraphEndpoint(graph_config(tenant))
    unreachable = GraphEndpoint(graph_config(tenant, base_url=f"https://127.0.0.1:{free_port()}/v1.0"))

    def plant(path: str, body: bytes) -> None:
        tenant.graph.add_folder(ADDRESS, path)  # made as a user would, where missing (IMAP's plant does too)
        tenant.graph.add_message(ADDRESS, path, body)

    yield Contract(endpoint, Login(ADDRESS, ADDRESS), Login("nobody@example.org", "nobody@example.org"),
                   unreachable, plant)


def test_expired_token_is_renewed_once(contract: Contract, cloud: Cloud) -> None:
    (tenant,) = cloud.tenants
    with open_mailbox(contract.endpoint, contract.login, write=False) as mailbox:
        mailbox.list_folders(sizes=False)
        tenant.graph.expire_tokens()
        assert {"Inbox", "Sent Items"} <= {f.path for f in mailbox.list_folders(sizes=False)}

