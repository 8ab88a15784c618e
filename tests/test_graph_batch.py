"""JSON batching (`$batch`) in the Graph connector, against the Graph simulator, whose batches follow
https://learn.microsoft.com/en-us/graph/json-batching: each sub-request evaluated against the mailbox limits on its
own, 424 for the requests behind a failed one in a `dependsOn` chain, faults injectable into sub-requests.

`sim.requests` counts every request by route key, sub-requests included; `sim.sub_requests` only the latter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from migrator.connectors.base import open_mailbox
from migrator.connectors.graph import client as graph_client
from migrator.connectors.graph import mailbox as graph_mailbox
from migrator.connectors.graph.client import BATCH_LIMIT, GraphClient, GraphError, SubRequest, spread
from migrator.connectors.graph.mime import TAG_PROPERTY
from migrator.errors import Transient
from migrator.model import CopyTag, Login
from tests.graph_fixtures import BATCH, OneMailbox, reset_counts
from tests.graph_fixtures import ONE_MAILBOX as ADDRESS
from tests.mssim.graph import GraphSimulator

MESSAGE = {"GET": "GET /users/{u}/messages/{m}", "PATCH": "PATCH /users/{u}/messages/{m}",
           "DELETE": "DELETE /users/{u}/messages/{m}"}
CREATE = "POST /users/{u}/mailFolders/{f}/messages"
Connect = Callable[..., tuple[GraphClient, GraphSimulator]]


@pytest.fixture
def connect_client(one_mailbox_tenant: OneMailbox) -> Connect:
    """A tenant (simulator options as keywords) with one mailbox, and a client of it."""

    def make(**graph_options: Any) -> tuple[GraphClient, GraphSimulator]:
        endpoint, graph = one_mailbox_tenant(**graph_options)
        return endpoint.client, graph

    return make


def delivered(graph: GraphSimulator, count: int) -> list[str]:
    """Ids of `count` new messages in the Inbox, subjects "note 0", "note 1", ..."""
    return [graph.add_message(ADDRESS, "Inbox", f"From: a@example.org\r\nTo: {ADDRESS}\r\nSubject: note {i}\r\n\r\n"
                                                f"body {i}\r\n".encode()) for i in range(count)]


def message_url(client: GraphClient, message_id: str) -> str:
    return client.user_url(ADDRESS, f"/messages/{quote(message_id, safe='')}")


def test_more_than_20_requests_go_20_to_a_batch_and_are_answered_in_order(connect_client: Connect) -> None:
    """45 reads: three POST /$batch (20, 20, 5), answers in request order, with a token that expired on the way
    (the batch's own 401 gets a new one); a lone request goes as itself."""
    client, graph = connect_client()
    ids = delivered(graph, 45)
    reads = [SubRequest("GET", message_url(client, i) + "?$select=subject") for i in ids]
    (lone,) = client.batch(ADDRESS, reads[:1])
    assert not isinstance(lone, GraphError) and lone["subject"] == "note 0"
    assert graph.requests[BATCH] == 0, "a lone request goes as itself"
    graph.expire_tokens()
    answers = client.batch(ADDRESS, reads)
    assert [answer["subject"] for answer in answers if not isinstance(answer, GraphError)] == [
        f"note {i}" for i in range(45)]
    assert graph.requests[BATCH] == 3 + 1, "three batches, one of them sent again with a new token"
    assert graph.sub_requests[MESSAGE["GET"]] == 45


def test_sub_requests_count_against_the_request_budget(connect_client: Connect,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Scaled down to 20 requests per 2 s on both sides, 60 PATCHes in batches of 20 take two more windows and
    draw no 429: the gate counts a batch as its 20 requests, as Outlook does, not as one."""
    monkeypatch.setattr(graph_client, "REQUESTS_PER_WINDOW", 20)
    monkeypatch.setattr(graph_client, "REQUEST_WINDOW", 2)
    client, graph = connect_client(requests_per_window=20, request_window_seconds=2.0)
    ids = delivered(graph, 60)
    started = time.monotonic()
    answers = client.batch(ADDRESS, [SubRequest("PATCH", message_url(client, i), {"isRead": True}) for i in ids])
    assert time.monotonic() - started >= 4.0
    assert not [answer for answer in answers if isinstance(answer, GraphError)]
    assert graph.throttled == 0, "the budget was kept by pacing, not discovered through 429s"
    assert all(m.is_read for m in graph.messages(ADDRESS, "Inbox"))


@pytest.mark.parametrize("status", [429, 503, 502])
def test_a_refused_sub_request_is_waited_out_and_sent_again(connect_client: Connect, status: int) -> None:
    """The third PATCH of six is refused without being acted on (429 and 503 with Retry-After 1; 502, which an
    idempotent write may safely repeat): its wait holds the mailbox, then it and the three behind it (424) go in
    a second batch. Every message is updated; only the refused request reached the server twice."""
    client, graph = connect_client(retry_after_seconds=1)
    ids = delivered(graph, 6)
    graph.fail_next("PATCH", ids[2], status)
    answers = client.batch(ADDRESS, [SubRequest("PATCH", message_url(client, i), {"isRead": True}) for i in ids])
    assert not [answer for answer in answers if isinstance(answer, GraphError)]
    assert all(m.is_read for m in graph.messages(ADDRESS, "Inbox"))
    assert graph.requests[BATCH] == 2
    assert graph.sub_requests[MESSAGE["PATCH"]] == len(ids) + 1
    assert client.gate(ADDRESS).throttled_seconds >= 1.0


def test_refusals_in_the_middle_get_their_own_answers_and_the_rest_are_sent_again(connect_client: Connect) -> None:
    """Twenty DELETEs of which every other message is already gone: each 404 is that request's answer, the
    requests behind it (424, never executed) go in the next batch. Ten refusals take ten batches — more than a
    throttled request may wait — yet none is a wait, and each request reached the server once."""
    client, graph = connect_client()
    ids = delivered(graph, 20)
    for gone in ids[1::2]:
        graph.delete_message(ADDRESS, gone)
    answers = client.batch(ADDRESS, [SubRequest("DELETE", message_url(client, i)) for i in ids])
    assert [isinstance(a, GraphError) and a.status for a in answers] == [False, 404] * 10
    assert graph.messages(ADDRESS, "Inbox") == []
    assert graph.requests[BATCH] == 10 and graph.sub_requests[MESSAGE["DELETE"]] == 20
    assert client.gate(ADDRESS).throttled_seconds == 0


def test_a_batched_create_whose_reply_a_gateway_lost_is_not_sent_again(connect_client: Connect) -> None:
    """The first of three creates is applied and answered 502 (the gateway lost the backend's reply): whether
    it was applied is unknown, so nothing is sent again blind; the caller hears Transient."""
    client, graph = connect_client()
    inbox = client.user_url(ADDRESS, "/mailFolders/inbox/messages")
    creates = [SubRequest("POST", inbox, {"subject": f"create {i}", "body": {"contentType": "text", "content": "x"}})
               for i in range(3)]
    graph.fail_next("POST", "/messages", 502, after=True)
    with pytest.raises(Transient, match="HTTP 502 to POST"):
        client.batch(ADDRESS, creates)
    assert [m.subject for m in graph.messages(ADDRESS, "Inbox")] == ["create 0"]
    assert graph.requests[BATCH] == 1 and graph.sub_requests[CREATE] == 1


def test_spread_keeps_every_slot_busy_with_as_few_batches_as_the_limit_allows() -> None:
    assert [len(part) for part in spread(range(4))] == [1, 1, 1, 1]
    assert [len(part) for part in spread(range(30))] == [8, 8, 8, 6]
    assert [len(part) for part in spread(range(80))] == [20] * 4
    assert [len(part) for part in spread(range(200))] == [17] * 11 + [13]
    assert all(len(part) <= BATCH_LIMIT for n in range(1, 500) for part in spread(range(n)))


def test_find_tagged_batches_its_queries_and_follows_their_next_links(
        one_mailbox_tenant: OneMailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three tags and their "pending-" twins are six filtered queries in batches; a tag on five copies, pages of
    two, is followed through its nextLink; the incomplete ("pending-") copy is removed in the write session."""
    monkeypatch.setattr(graph_mailbox, "PAGE", 2)
    endpoint, graph = one_mailbox_tenant()
    ids = delivered(graph, 7)
    tags = [CopyTag("a" * 64, 1), CopyTag("b" * 64, 1), CopyTag("c" * 64, 1)]
    for message_id in ids[:5]:
        graph.update_message(ADDRESS, message_id, extended={TAG_PROPERTY: tags[0].digest})
    graph.update_message(ADDRESS, ids[5], extended={TAG_PROPERTY: tags[1].digest})
    graph.update_message(ADDRESS, ids[6], extended={TAG_PROPERTY: graph_mailbox.PENDING + tags[2].digest})
    with open_mailbox(endpoint, Login(ADDRESS, ADDRESS), write=True) as mailbox:
        inbox = next(folder for folder in mailbox.list_folders(sizes=False) if folder.path == "Inbox")
        reset_counts(graph)
        found = mailbox.find_tagged(inbox, tags, None)
    assert {tag: sorted(found_ids) for tag, found_ids in found.items()} == {tags[0]: sorted(ids[:5]),
                                                                             tags[1]: [ids[5]]}
    assert sorted(m.id for m in graph.messages(ADDRESS, "Inbox")) == sorted(ids[:6])
    assert graph.sub_requests["GET /users/{u}/mailFolders/{f}/messages"] == 6 and graph.requests[BATCH] == 3
    assert graph.requests["GET /users/{u}/mailFolders/{f}/messages"] == 6 + 2, "two more pages of the first tag"
