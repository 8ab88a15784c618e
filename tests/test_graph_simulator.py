"""The Microsoft Graph simulator (tests/mssim/graph.py) over real HTTPS: the documented behaviours the Graph connector
relies on -- paging, delta, Outlook throttling, drafts versus delivered items, extended-property filters, $batch, size
limits, upload sessions, MIME re-rendering and fault injection."""

from __future__ import annotations

import base64
import html
import http.client as httplib
import re
import ssl
import sysconfig
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from migrator.fingerprint import fingerprint_fields
from tests.mssim.graph import GraphSimulator
from tests.mssim.tls import TestCA

TOKENS: dict[str, dict[str, str]] = {"tok-a": {"appid": "app-1"}, "tok-b": {"appid": "app-1"},
                                     "tok-other-app": {"appid": "app-2"}}
TAG = "String {6f0c7a1e-5b7d-4a36-9a8e-3c2f7b1d9e42} Name MigratorCopyTag"
ALICE, BOB = "alice@contoso.test", "bob@contoso.test"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + bytes(range(255, -1, -1)) * 8 + b"\n%%EOF\n"


def validate(token: str) -> Mapping[str, Any]:
    if token not in TOKENS:
        raise ValueError("unknown token")
    return TOKENS[token]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(Path(tmp_path_factory.mktemp("graph-ca")))


def client(ca: TestCA, token: str | None = "tok-a") -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # the machine's REQUESTS_CA_BUNDLE would override verify=
    s.verify = str(ca.ca_path)
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
    return s


def start(ca: TestCA, **options: Any) -> GraphSimulator:
    sim = GraphSimulator(ca, validate, **options)
    sim.__enter__()
    sim.add_user(ALICE, display_name="Alice Archer")
    sim.add_user(BOB, display_name="Bob Baker")
    return sim


@pytest.fixture
def sim(ca: TestCA) -> Iterator[GraphSimulator]:
    s = start(ca, page_size=3)
    yield s
    s.__exit__(None, None, None)


@pytest.fixture
def http(ca: TestCA) -> Iterator[requests.Session]:
    s = client(ca)
    yield s
    s.close()


def sample_mime(subject: str = "Ünïcödé quarterly report — numbers inside", *, n: int = 0,
                date: str = "Tue, 05 Mar 2024 09:15:30 +0100") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Carol Smith <carol@example.org>"
    msg["To"] = "Alice Archer <alice@contoso.test>, dave@example.org"
    msg["Cc"] = "Érin Ö <erin@example.org>"
    msg["Reply-To"] = "replies@example.org"
    msg["Subject"] = subject
    msg["Date"] = date
    msg["Message-ID"] = f"<report-{n}@example.org>"
    msg["X-Original-Tag"] = "kept"
    msg.set_content("Hello Alice,\nthe numbers are attached.\n")
    msg.add_alternative("<p>Hello <b>Alice</b>,</p><p>the numbers are attached.</p><img src=\"cid:logo@x\">",
                        subtype="html")
    msg.get_payload()[1].add_related(PNG, maintype="image", subtype="png", cid="<logo@x>", filename="logo.png",
                                        disposition="inline")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="Q1 résumé.pdf")
    return msg.as_bytes(policy=policy.SMTP)


def simple_mime(n: int, subject: str | None = None) -> bytes:
    return (f"From: sender{n}@example.org\r\nTo: alice@contoso.test\r\nSubject: {subject or f'message {n}'}\r\n"
            f"Date: Mon, 0{1 + n % 9} Jan 2024 10:00:00 +0000\r\nMessage-ID: <m{n}@example.org>\r\n\r\n"
            f"body {n}\r\n").encode()


def fingerprint(raw: bytes) -> dict[str, Any]:
    """What a migration compares across a re-rendering (independent of the simulator's own parser)."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    body_html = body_text = None
    attachments = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_type() == "message/rfc822":
            continue
        if part.get_filename() or part.get_content_disposition() == "attachment" \
                or part.get_content_maintype() != "text":
            attachments.append((part.get_filename(), part.get_payload(decode=True)))
        elif part.get_content_type() == "text/html" and body_html is None:
            body_html = part.get_content()
        elif part.get_content_type() == "text/plain" and body_text is None:
            body_text = part.get_content()
    text = html.unescape(re.sub(r"<[^>]+>", " ", body_html)) if body_html is not None else body_text or ""

    def addresses(name: str) -> list[str]:
        return [a.lower() for _, a in getaddresses([str(v) for v in msg.get_all(name, [])])]

    return {"subject": str(msg["Subject"]), "message_id": str(msg["Message-ID"]).strip(),
            "from": addresses("From"), "to": addresses("To"), "cc": addresses("Cc"),
            "date": parsedate_to_datetime(str(msg["Date"])).astimezone(UTC).replace(microsecond=0),
            "text": " ".join(text.split()), "attachments": sorted(attachments, key=lambda a: a[0] or "")}


def json_message(subject: str = "hello", *, extended: list[dict[str, str]] | None = None,
                 body: str = "Hi there", **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"subject": subject, "body": {"contentType": "text", "content": body},
                           "from": {"emailAddress": {"name": "Carol", "address": "carol@example.org"}},
                           "toRecipients": [{"emailAddress": {"address": ALICE}}]}
    if extended is not None:
        out["singleValueExtendedProperties"] = extended
    out.update(more)
    return out


def all_pages(http: requests.Session, url: str, **kwargs: Any) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    values: list[dict[str, Any]] = []
    pages = 0
    while True:
        r = http.get(url, **kwargs)
        assert r.status_code == 200, r.text
        data = r.json()
        pages += 1
        values.extend(data["value"])
        if "@odata.nextLink" not in data:
            return values, pages, data
        url = data["@odata.nextLink"]


# ---------------------------------------------------------------------------------------------------- directory


def test_users_folders_and_paging(sim: GraphSimulator, http: requests.Session) -> None:
    users, pages, _ = all_pages(http, f"{sim.base_url}/users?$select=id,mail,userPrincipalName,displayName&$top=1")
    assert pages == 2 and {u["mail"] for u in users} == {ALICE, BOB}
    assert set(users[0]) == {"id", "mail", "userPrincipalName", "displayName"}
    me = http.get(f"{sim.base_url}/users/{ALICE.upper()}").json()  # user ids and UPNs are case-insensitive
    assert me["id"] == users[0]["id"] and me["displayName"] == "Alice Archer"
    assert http.get(f"{sim.base_url}/users/{me['id']}/mailFolders/inbox").json()["displayName"] == "Inbox"
    r = http.get(f"{sim.base_url}/users/nobody@contoso.test/mailFolders")
    assert r.status_code == 404 and r.json()["error"]["code"] == "ErrorInvalidUser"

    visible, pages, _ = all_pages(http, f"{sim.base_url}/users/{ALICE}/mailFolders")  # page_size=3
    assert pages == 3
    assert {f["displayName"] for f in visible} == {"Archive", "Conversation History", "Deleted Items", "Drafts",
                                                   "Inbox", "Junk Email", "Outbox", "Sent Items"}
    everything, _, _ = all_pages(http, f"{sim.base_url}/users/{ALICE}/mailFolders?includeHiddenFolders=true&$top=50")
    hidden = [f for f in everything if f["isHidden"]]
    assert [f["displayName"] for f in hidden] == ["Clutter"]
    assert set(everything[0]) >= {"id", "displayName", "parentFolderId", "childFolderCount", "totalItemCount",
                                  "unreadItemCount", "isHidden"}
    root = http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/msgfolderroot").json()
    assert all(f["parentFolderId"] == root["id"] for f in everything)
    deletions = http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/RecoverableItemsDeletions").json()
    assert deletions["isHidden"] and deletions["id"] not in {f["id"] for f in everything}

    created = http.post(f"{sim.base_url}/users/{ALICE}/mailFolders", json={"displayName": "Projects"})
    assert created.status_code == 201
    again = http.post(f"{sim.base_url}/users/{ALICE}/mailFolders", json={"displayName": "projects"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "ErrorFolderExists"
    fid = created.json()["id"]
    child = http.post(f"{sim.base_url}/users/{ALICE}/mailFolders/{fid}/childFolders", json={"displayName": "2024"})
    assert child.status_code == 201 and child.json()["parentFolderId"] == fid
    assert http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/{fid}").json()["childFolderCount"] == 1
    assert sim.folders(ALICE)["Projects/2024"] == child.json()["id"]
    renamed = http.patch(f"{sim.base_url}/users/{ALICE}/mailFolders/{child.json()['id']}", json={"displayName": "Y24"})
    assert renamed.status_code == 200 and sim.folders(ALICE)["Projects/Y24"] == child.json()["id"]
    sub, _, _ = all_pages(http, f"{sim.base_url}/users/{ALICE}/mailFolders/{fid}/childFolders")
    assert [f["displayName"] for f in sub] == ["Y24"]
    r = http.delete(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox")
    assert r.status_code == 400 and r.json()["error"]["code"] == "ErrorDeleteDistinguishedFolder"
    assert http.delete(f"{sim.base_url}/users/{ALICE}/mailFolders/{fid}").status_code == 204
    assert "Projects" not in sim.folders(ALICE) and "Projects/2024" not in sim.folders(ALICE)
    assert http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/{fid}").status_code == 404
    assert http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/not-an-id").status_code == 400


def test_mailbox_settings_and_forwarding_rule(sim: GraphSimulator, http: requests.Session) -> None:
    sim.add_user("fwd@contoso.test", forwarding_to="elsewhere@example.org", auto_reply=True)
    settings = http.get(f"{sim.base_url}/users/fwd@contoso.test/mailboxSettings").json()
    assert settings["automaticRepliesSetting"]["status"] == "alwaysEnabled"
    assert http.get(f"{sim.base_url}/users/{ALICE}/mailboxSettings").json()["automaticRepliesSetting"]["status"] \
        == "disabled"
    rules = http.get(f"{sim.base_url}/users/fwd@contoso.test/mailFolders/inbox/messageRules").json()["value"]
    assert rules[0]["actions"]["forwardTo"][0]["emailAddress"]["address"] == "elsewhere@example.org"
    assert http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messageRules").json()["value"] == []


def test_keep_alive_connection_serves_many_requests(sim: GraphSimulator, ca: TestCA) -> None:
    context = ssl.create_default_context(cafile=str(ca.ca_path))
    port = int(sim.base_url.split(":")[2].split("/")[0])
    conn = httplib.HTTPSConnection("127.0.0.1", port, context=context)
    try:
        for _ in range(3):
            conn.request("GET", f"/v1.0/users/{ALICE}/mailFolders/inbox", headers={"Authorization": "Bearer tok-a"})
            resp = conn.getresponse()
            assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(resp.read())
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------------ messages


def test_list_messages_pages_and_selects(sim: GraphSimulator, http: requests.Session) -> None:
    for n in range(7):
        sim.add_message(ALICE, "Inbox", simple_mime(n), is_read=n % 2 == 0)
    url = f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages?$select=subject,isRead"
    values, pages, _ = all_pages(http, url)
    assert pages == 3 and len(values) == 7
    assert all(set(v) == {"@odata.etag", "id", "subject", "isRead"} for v in values)
    assert len(http.get(url + "&$top=5").json()["value"]) == 5
    assert http.get(url + "&$count=true").json()["@odata.count"] == 7
    bad = http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages?$select=nonsense")
    assert bad.status_code == 400
    inbox = http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox").json()
    assert inbox["totalItemCount"] == 7 and inbox["unreadItemCount"] == 3
    since = http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages",
                     params={"$filter": "receivedDateTime ge 2024-01-05T00:00:00Z", "$top": "50"}).json()["value"]
    assert len(since) == 3  # Jan 5..7


def test_json_create_is_a_draft_unless_the_flags_say_otherwise(sim: GraphSimulator, http: requests.Session) -> None:
    url = f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages"
    before = datetime.now(UTC) - timedelta(seconds=2)
    draft = http.post(url, json=json_message("draft"))
    assert draft.status_code == 201, draft.text
    body = draft.json()
    assert body["isDraft"] is True
    assert datetime.fromisoformat(body["receivedDateTime"].replace("Z", "+00:00")) >= before

    delivered = http.post(url, json=json_message("delivered", extended=[
        {"id": "Integer 0x0E07", "value": "1"},
        {"id": "SystemTime 0x0E06", "value": "2020-01-02T03:04:05Z"},
        {"id": "SystemTime 0x0039", "value": "2020-01-02T03:00:00Z"},
        {"id": TAG, "value": "copy-1"}])).json()
    assert delivered["isDraft"] is False and delivered["isRead"] is True
    assert delivered["receivedDateTime"] == "2020-01-02T03:04:05Z"
    assert delivered["sentDateTime"] == "2020-01-02T03:00:00Z"
    unread = http.post(url, json=json_message("unread", extended=[{"id": "Integer 0x0E07", "value": "0"}])).json()
    assert unread["isDraft"] is False and unread["isRead"] is False

    # Flags and delivery time are creation-only: a later PATCH of them is ignored.
    mid = delivered["id"]
    patched = http.patch(f"{sim.base_url}/users/{ALICE}/messages/{mid}", json={
        "isRead": False, "categories": ["Red"], "flag": {"flagStatus": "flagged"},
        "singleValueExtendedProperties": [{"id": "Integer 0x0E07", "value": "9"},
                                          {"id": "SystemTime 0x0E06", "value": "2021-01-01T00:00:00Z"}]})
    assert patched.status_code == 200, patched.text
    p = patched.json()
    assert (p["isDraft"], p["isRead"], p["receivedDateTime"]) == (False, False, "2020-01-02T03:04:05Z")
    assert p["categories"] == ["Red"] and p["flag"]["flagStatus"] == "flagged"
    r = http.patch(f"{sim.base_url}/users/{ALICE}/messages/{mid}", json={"subject": "changed"})
    assert r.status_code == 400  # subject is updatable only on drafts
    assert http.patch(f"{sim.base_url}/users/{ALICE}/messages/{draft.json()['id']}",
                      json={"subject": "changed"}).json()["subject"] == "changed"
    stored = {m.subject: m for m in sim.messages(ALICE, "Inbox")}
    assert stored["delivered"].extended == {TAG: "copy-1"} and not stored["delivered"].is_draft

    r = http.post(url, json=json_message("hdr", internetMessageHeaders=[{"name": "References", "value": "<a@b>"}]))
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidInternetMessageHeader"
    ok = http.post(url, json=json_message("hdr", internetMessageHeaders=[{"name": "x-migrator", "value": "yes"}]))
    assert ok.status_code == 201
    assert b"x-migrator: yes" in sim.mime(ALICE, ok.json()["id"])


def test_mime_create_is_a_draft(sim: GraphSimulator, http: requests.Session) -> None:
    mime = sample_mime()
    r = http.post(f"{sim.base_url}/users/{ALICE}/messages", data=base64.b64encode(mime),
                  headers={"Content-Type": "text/plain"})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["isDraft"] is True and m["sentDateTime"] == "2024-03-05T08:15:30Z"
    assert m["internetMessageId"] == "<report-0@example.org>" and m["hasAttachments"] is True
    assert [x.id for x in sim.messages(ALICE, "Drafts")] == [m["id"]]  # no folder given: Drafts
    in_folder = http.post(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages",
                          data=base64.b64encode(simple_mime(1)), headers={"Content-Type": "text/plain"})
    assert in_folder.json()["isDraft"] is True and in_folder.json()["parentFolderId"] == sim.folders(ALICE)["Inbox"]
    bad = http.post(f"{sim.base_url}/users/{ALICE}/messages", data=b"%%% not base64 %%%",
                    headers={"Content-Type": "text/plain"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "ErrorMimeContentInvalidBase64String"


def test_filter_and_expand_named_extended_property(sim: GraphSimulator, http: requests.Session) -> None:
    url = f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages"
    ids = {}
    for tag in ("t-1", "t-2", "t-3"):
        ids[tag] = http.post(url, json=json_message(tag, extended=[
            {"id": "Integer 0x0E07", "value": "1"}, {"id": TAG, "value": tag}])).json()["id"]

    def query(flt: str) -> list[str]:
        r = http.get(url, params={"$filter": flt, "$select": "id"})
        assert r.status_code == 200, r.text
        return [v["id"] for v in r.json()["value"]]

    assert query(f"singleValueExtendedProperties/Any(ep: ep/id eq '{TAG}' and ep/value eq 't-2')") == [ids["t-2"]]
    # type keyword and GUID are case-insensitive, the value comparison too; the Name is case-sensitive
    upper = "string {6F0C7A1E-5B7D-4A36-9A8E-3C2F7B1D9E42} Name MigratorCopyTag"
    assert query(f"singleValueExtendedProperties/any(ep:ep/Id eq '{upper}' and ep/Value eq 'T-3')") == [ids["t-3"]]
    renamed = TAG.replace("MigratorCopyTag", "migratorcopytag")
    assert query(f"singleValueExtendedProperties/any(ep: ep/id eq '{renamed}' and ep/value eq 't-3')") == []
    assert query("singleValueExtendedProperties/any(ep: ep/id eq 'Integer 0x0E07' and "
                 "cast(ep/value, Edm.Int32) eq 1)") != []
    assert len(query(f"singleValueExtendedProperties/any(ep: ep/id eq '{TAG}' and startswith(ep/value, 't-'))")) == 3
    bad = http.get(url, params={"$filter": "subject eq"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "ErrorInvalidUrlQueryFilter"

    expanded = http.get(f"{sim.base_url}/users/{ALICE}/messages/{ids['t-1']}", params={
        "$select": "id", "$expand": f"singleValueExtendedProperties($filter=id eq 'Integer 0x0E08' or "
                                    f"id eq '{TAG}' or id eq 'Integer 0x1081')"}).json()
    props = {e["id"].lower(): e["value"] for e in expanded["singleValueExtendedProperties"]}
    assert props[TAG.lower()] == "t-1"
    assert int(props["integer 0xe08"]) == len(http.get(f"{sim.base_url}/users/{ALICE}/messages/{ids['t-1']}/$value")
                                              .content)
    assert len(props) == 2  # 0x1081 was never set
    # v1.0 mailFolder has no size property: it is read as PidTagMessageSizeExtended
    folder = http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox", params={
        "$expand": "singleValueExtendedProperties($filter=id eq 'Long 0x0E08')"}).json()
    assert int(folder["singleValueExtendedProperties"][0]["value"]) == sum(m.size for m in sim.messages(ALICE, "Inbox"))


def test_delta_rounds_report_created_updated_and_deleted(sim: GraphSimulator, http: requests.Session) -> None:
    ids = [sim.add_message(ALICE, "Inbox", simple_mime(n)) for n in range(5)]
    sim.add_message(ALICE, "Sent Items", simple_mime(9))  # another folder: not in this delta
    url = f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages/delta?$select=subject,isRead"
    prefer = {"Prefer": "odata.maxpagesize=2"}
    first = http.get(url, headers=prefer)
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"
    seen, pages, last = all_pages(http, url, headers=prefer)
    assert pages == 3 and sorted(v["id"] for v in seen) == sorted(ids)
    assert all(set(v) <= {"@odata.type", "@odata.etag", "id", "subject", "isRead"} for v in seen)
    delta_link = last["@odata.deltaLink"]

    new = sim.add_message(ALICE, "Inbox", simple_mime(7))
    sim.update_message(ALICE, ids[1], is_read=True)
    sim.delete_message(ALICE, ids[2])
    changes, _, last = all_pages(http, delta_link, headers=prefer)
    by_id = {v["id"]: v for v in changes}
    assert set(by_id) == {new, ids[1], ids[2]}
    assert by_id[ids[2]]["@removed"] == {"reason": "deleted"}
    assert by_id[ids[1]]["isRead"] is True and set(by_id[new]) >= {"subject", "isRead"}
    quiet, _, last = all_pages(http, last["@odata.deltaLink"])
    assert quiet == []

    created_only = http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages/delta?changeType=created")
    link = created_only.json().get("@odata.deltaLink") or all_pages(http, created_only.json()["@odata.nextLink"])[2][
        "@odata.deltaLink"]
    sim.update_message(ALICE, ids[0], flagged=True)
    newest = sim.add_message(ALICE, "Inbox", simple_mime(8))
    assert [v["id"] for v in all_pages(http, link)[0]] == [newest]
    bad = http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages/delta",
                   params={"$filter": "subject eq 'x'"})
    assert bad.status_code == 400


def test_delete_message_twice(sim: GraphSimulator, http: requests.Session) -> None:
    mid = sim.add_message(ALICE, "Inbox", simple_mime(1))
    assert http.delete(f"{sim.base_url}/users/{ALICE}/messages/{mid}").status_code == 204
    again = http.delete(f"{sim.base_url}/users/{ALICE}/messages/{mid}")
    assert again.status_code == 404 and again.json()["error"]["code"] == "ErrorItemNotFound"
    assert sim.messages(ALICE, "Inbox") == []


def test_small_attachment_post(sim: GraphSimulator, http: requests.Session) -> None:
    mid = http.post(f"{sim.base_url}/users/{ALICE}/messages", json=json_message("with file")).json()["id"]
    r = http.post(f"{sim.base_url}/users/{ALICE}/messages/{mid}/attachments", json={
        "@odata.type": "#microsoft.graph.fileAttachment", "name": "data.bin", "contentType": "application/pdf",
        "contentBytes": base64.b64encode(PDF).decode()})
    assert r.status_code == 201, r.text
    listed = http.get(f"{sim.base_url}/users/{ALICE}/messages/{mid}/attachments").json()["value"]
    assert base64.b64decode(listed[0]["contentBytes"]) == PDF
    assert http.get(f"{sim.base_url}/users/{ALICE}/messages/{mid}/attachments/{listed[0]['id']}/$value").content \
        == PDF
    assert http.get(f"{sim.base_url}/users/{ALICE}/messages/{mid}?$select=hasAttachments").json()["hasAttachments"]


# ---------------------------------------------------------------------------------------------------- throttling


def test_fifth_concurrent_request_to_one_mailbox_gets_429(ca: TestCA) -> None:
    sim = start(ca, latency_seconds=0.6)
    try:
        results: dict[str, list[requests.Response]] = {ALICE: [], BOB: []}
        barrier = threading.Barrier(9)
        lock = threading.Lock()

        def worker(user: str) -> None:
            with client(ca) as s:
                s.get(f"{sim.base_url}/users/{user}")  # connect (directory: no mailbox limit)
                barrier.wait()
                r = s.get(f"{sim.base_url}/users/{user}/mailFolders/inbox")
                with lock:
                    results[user].append(r)

        threads = [threading.Thread(target=worker, args=(u,)) for u in [ALICE] * 5 + [BOB] * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alice = sorted(r.status_code for r in results[ALICE])
        assert alice == [200, 200, 200, 200, 429]
        refused = next(r for r in results[ALICE] if r.status_code == 429)
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "ApplicationThrottled"
        assert "MailboxConcurrency" in refused.json()["error"]["message"]
        assert [r.status_code for r in results[BOB]] == [200] * 4  # another mailbox is not affected
        assert sim.throttled == 1
    finally:
        sim.__exit__(None, None, None)


def test_request_budget_per_app_and_mailbox(ca: TestCA) -> None:
    sim = start(ca, requests_per_window=5, request_window_seconds=2.0, retry_after_seconds=2)
    try:
        with client(ca) as s, client(ca, "tok-other-app") as other:
            url = f"{sim.base_url}/users/{ALICE}/mailFolders/inbox"
            assert [s.get(url).status_code for _ in range(5)] == [200] * 5
            refused = s.get(url)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
            assert s.get(f"{sim.base_url}/users/{BOB}/mailFolders/inbox").status_code == 200
            assert other.get(url).status_code == 200  # the limit is per app and mailbox
            time.sleep(2.1)
            assert s.get(url).status_code == 200
    finally:
        sim.__exit__(None, None, None)


def test_upload_budget(ca: TestCA) -> None:
    sim = start(ca, upload_bytes_per_window=20_000, upload_window_seconds=2.0)
    try:
        with client(ca) as s:
            url = f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages"
            big = json_message("big", body="x" * 12_000)
            assert s.post(url, json=big).status_code == 201
            refused = s.post(url, json=big)
            assert refused.status_code == 429 and "IncomingBytes" in refused.json()["error"]["message"]
            assert s.get(url).status_code == 200  # reads upload nothing
            time.sleep(2.1)
            assert s.post(url, json=big).status_code == 201
            assert len(sim.messages(ALICE, "Inbox")) == 2
    finally:
        sim.__exit__(None, None, None)


def test_authentication(sim: GraphSimulator, ca: TestCA) -> None:
    url = f"{sim.base_url}/users/{ALICE}/mailFolders/inbox"
    with client(ca, None) as anonymous:
        r = anonymous.get(url)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer ")
        assert r.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert anonymous.get(url, headers={"Authorization": "Bearer forged"}).status_code == 401
    with client(ca, "tok-a") as a, client(ca, "tok-b") as b:
        assert a.get(url).status_code == 200
        sim.expire_tokens()
        expired = a.get(url)
        assert expired.status_code == 401
        assert expired.json()["error"]["message"] == "Access token has expired or is not yet valid."
        assert b.get(url).status_code == 200  # a token not seen before is fine


# --------------------------------------------------------------------------------------------------------- batch


def test_batch(sim: GraphSimulator, http: requests.Session) -> None:
    url = f"{sim.base_url}/$batch"
    too_many = http.post(url, json={"requests": [{"id": str(i), "method": "GET", "url": f"/users/{ALICE}"}
                                                 for i in range(21)]})
    assert too_many.status_code == 400

    five = http.post(url, json={"requests": [{"id": str(i), "method": "GET",
                                              "url": f"/users/{ALICE}/mailFolders/inbox"} for i in range(5)]})
    assert five.status_code == 200
    statuses = {r["id"]: r for r in five.json()["responses"]}
    assert sorted(r["status"] for r in statuses.values()) == [200, 200, 200, 200, 429]
    assert statuses["4"]["status"] == 429 and statuses["4"]["headers"]["Retry-After"] == "1"
    assert sim.requests["GET /users/{u}/mailFolders/{f}"] == 5 and sim.requests["POST /$batch"] == 2

    sequential = http.post(url, json={"requests": [
        {"id": str(i), "method": "GET", "url": f"/users/{ALICE}/mailFolders/inbox",
         **({"dependsOn": [str(i - 1)]} if i else {})} for i in range(6)]})
    assert [r["status"] for r in sequential.json()["responses"]] == [200] * 6  # one at a time: never over the limit

    missing = "AAMkAmissingmissingmissingmissingmissing"
    failed = http.post(url, json={"requests": [
        {"id": "1", "method": "GET", "url": f"/users/{ALICE}/messages/{missing}"},
        {"id": "2", "method": "GET", "url": f"/users/{ALICE}/mailFolders/inbox", "dependsOn": ["1"]},
        {"id": "3", "method": "GET", "url": f"/users/{ALICE}/mailFolders/inbox", "dependsOn": ["2"]}]})
    assert [r["status"] for r in failed.json()["responses"]] == [404, 424, 424]

    created = http.post(url, json={"requests": [
        {"id": "c", "method": "POST", "url": f"/users/{ALICE}/mailFolders/inbox/messages",
         "headers": {"Content-Type": "application/json"}, "body": json_message("batched")},
        {"id": "m", "method": "POST", "url": f"/users/{ALICE}/mailFolders/inbox/messages",
         "headers": {"Content-Type": "text/plain"}, "body": base64.b64encode(simple_mime(3)).decode()}]})
    bodies = {r["id"]: r for r in created.json()["responses"]}
    assert bodies["c"]["status"] == 201 and bodies["m"]["status"] == 201
    value = http.post(url, json={"requests": [
        {"id": "v", "method": "GET", "url": f"/users/{ALICE}/messages/{bodies['c']['body']['id']}/$value"}]})
    raw = base64.b64decode(value.json()["responses"][0]["body"])
    assert fingerprint(raw)["subject"] == "batched"
    assert sim.requests["POST /users/{u}/mailFolders/{f}/messages"] == 2


# --------------------------------------------------------------------------------------------------- size limits


def test_request_body_over_4mb_is_413(sim: GraphSimulator, http: requests.Session) -> None:
    r = http.post(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages",
                  json=json_message("huge", body="y" * (4 * 2**20 + 10)))
    assert r.status_code == 413
    assert sim.messages(ALICE, "Inbox") == []
    assert http.get(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox").status_code == 200


def test_message_size_and_quota(ca: TestCA) -> None:
    sim = start(ca, max_message_size=10_000)
    sim.add_user("carol@contoso.test", quota_bytes=6_000)
    try:
        with client(ca) as s:
            r = s.post(f"{sim.base_url}/users/{ALICE}/messages", json=json_message("big", body="z" * 12_000))
            assert r.status_code == 400 and r.json()["error"]["code"] == "ErrorMessageSizeExceeded"
            url = f"{sim.base_url}/users/carol@contoso.test/messages"
            assert s.post(url, json=json_message("fits", body="q" * 2_500)).status_code == 201
            full = s.post(url, json=json_message("does not fit", body="q" * 2_500))
            assert full.status_code == 403 and full.json()["error"]["code"] == "ErrorQuotaExceeded"
            assert [m.subject for m in sim.messages("carol@contoso.test", "Drafts")] == ["fits"]
    finally:
        sim.__exit__(None, None, None)


def test_upload_session_in_chunks(ca: TestCA) -> None:
    sim = start(ca, min_upload_session_size=4_000, max_message_size=20_000)
    try:
        with client(ca) as s, client(ca, None) as anonymous:
            mid = s.post(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages",
                         json=json_message("big attachment")).json()["id"]
            base = f"{sim.base_url}/users/{ALICE}/messages/{mid}/attachments/createUploadSession"
            small = s.post(base, json={"AttachmentItem": {"attachmentType": "file", "name": "s.bin", "size": 100}})
            assert small.status_code == 400
            assert small.json()["error"]["code"] == "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"
            data = bytes(range(256)) * 20  # 5120 bytes
            session = s.post(base, json={"AttachmentItem": {"attachmentType": "file", "name": "big.bin",
                                                            "size": len(data), "contentType": "image/png"}})
            assert session.status_code == 201 and session.json()["nextExpectedRanges"] == ["0-"]
            upload_url = session.json()["uploadUrl"]

            def put(start: int, end: int, url: str = upload_url) -> requests.Response:
                return anonymous.put(url, data=data[start:end + 1], headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"bytes {start}-{end}/{len(data)}"})

            first = put(0, 2047)
            assert first.status_code == 200 and first.json()["nextExpectedRanges"] == ["2048"]
            assert put(3000, 3999).status_code == 416  # out of order
            assert put(0, 2047, upload_url.replace("authtoken=", "authtoken=x")).status_code == 401
            with_token = s.put(upload_url, data=data[2048:4096],
                               headers={"Content-Range": f"bytes 2048-4095/{len(data)}"})
            assert with_token.status_code == 401  # the URL is pre-authenticated: a Graph token is the wrong audience
            assert with_token.json()["error"]["code"] == "InvalidAudienceForResource"
            assert put(2048, 4095).json()["nextExpectedRanges"] == ["4096"]
            last = put(4096, len(data) - 1)
            assert last.status_code == 201 and "Attachments('" in last.headers["Location"]
            stored = sim.messages(ALICE, "Inbox")[0]
            assert stored.attachments[0].data == data and stored.attachments[0].name == "big.bin"
            assert sim.requests["PUT /api/v2.0/Users({u})/Messages({m})/AttachmentSessions({s})"] == 6

            over = s.post(base, json={"AttachmentItem": {"attachmentType": "file", "name": "o.bin",
                                                         "size": 18_000}}).json()["uploadUrl"]
            chunk = bytes(9_000)
            ok = anonymous.put(over, data=chunk, headers={"Content-Range": "bytes 0-8999/18000"})
            assert ok.status_code == 200
            too_big = anonymous.put(over, data=chunk, headers={"Content-Range": "bytes 9000-17999/18000"})
            assert too_big.status_code == 400 and too_big.json()["error"]["code"] == "ErrorMessageSizeExceeded"
    finally:
        sim.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------------- rendering


def test_value_is_rerendered_but_keeps_the_content(sim: GraphSimulator, http: requests.Session) -> None:
    original = sample_mime()
    mid = sim.add_message(ALICE, "Inbox", original)
    rendered = http.get(f"{sim.base_url}/users/{ALICE}/messages/{mid}/$value")
    assert rendered.status_code == 200
    raw = rendered.content
    assert raw != original
    assert raw == sim.mime(ALICE, mid) == http.get(f"{sim.base_url}/users/{ALICE}/messages/{mid}/$value").content
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line endings only
    assert fingerprint(raw) == fingerprint(original)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"X-MS-Exchange-Organization-SCL" in head and b"Thread-Index:" in head and b"=?utf-8?" in head
    assert b"X-Original-Tag: kept" in head
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if line.startswith(b"Subject"))
    original_boundaries = set(re.findall(rb'boundary="([^"]+)"', original))
    assert original_boundaries.isdisjoint(re.findall(rb'boundary="([^"]+)"', raw))

    listed = http.get(f"{sim.base_url}/users/{ALICE}/messages/{mid}").json()
    assert listed["isDraft"] is False and listed["subject"] == fingerprint(original)["subject"]
    assert listed["ccRecipients"][0]["emailAddress"]["address"] == "erin@example.org"

    json_made = http.post(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages", json={
        **json_message("html body", extended=[{"id": "Integer 0x0E07", "value": "1"}]),
        "body": {"contentType": "html", "content": "<p>Hello <i>there</i></p>"},
        "attachments": [{"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.pdf",
                         "contentType": "application/pdf", "contentBytes": base64.b64encode(PDF).decode()}]}).json()
    generated = sim.mime(ALICE, json_made["id"])
    assert b"multipart/alternative" in generated and b"<meta http-equiv=3D\"Content-Type\"" in generated
    assert fingerprint(generated)["text"] == "Hello there"
    assert fingerprint(generated)["attachments"] == [("a.pdf", PDF)]


def test_rerendering_keeps_the_content_fingerprint_of_real_world_mail(sim: GraphSimulator) -> None:
    """CPython's sample messages (odd structures, charsets, reports, broken boundaries) keep the fingerprint the
    migration verifies with, except a Message-ID or Date Exchange generates when the source has none."""
    samples = sorted((Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data").glob("msg_*.txt"))
    if not samples:
        pytest.skip("this Python has no test_email sample messages")
    for path in samples:
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        mid = sim.add_message(ALICE, "Inbox", raw)
        source, rendered = fingerprint_fields(raw), fingerprint_fields(sim.mime(ALICE, mid))
        for key in ("message_id", "date"):
            if not source[key]:
                rendered[key] = ""
        assert rendered == source, path.name


def test_embedded_message_survives_rerendering(sim: GraphSimulator, http: requests.Session) -> None:
    inner = EmailMessage()
    inner["From"], inner["Subject"] = "x@example.org", "the original"
    inner.set_content("inner body\n")
    outer = EmailMessage()
    outer["From"], outer["To"], outer["Subject"] = "a@example.org", ALICE, "forwarded"
    outer["Date"] = "Mon, 01 Jan 2024 00:00:00 +0000"
    outer.set_content("see attached\n")
    outer.add_attachment(inner)
    mid = sim.add_message(ALICE, "Inbox", outer.as_bytes(policy=policy.SMTP))
    rendered = BytesParser(policy=policy.default).parsebytes(sim.mime(ALICE, mid))
    embedded = next(p for p in rendered.walk() if p.get_content_type() == "message/rfc822").get_payload()[0]
    assert embedded["Subject"] == "the original" and embedded.get_content().strip() == "inner body"
    assert http.get(f"{sim.base_url}/users/{ALICE}/messages/{mid}?$select=hasAttachments").json()["hasAttachments"]


def test_chunked_request_body(sim: GraphSimulator, http: requests.Session) -> None:
    payload = base64.b64encode(simple_mime(4))
    r = http.post(f"{sim.base_url}/users/{ALICE}/mailFolders/inbox/messages",
                  data=(payload[i:i + 10] for i in range(0, len(payload), 10)),
                  headers={"Content-Type": "text/plain"})  # a generator body goes out chunked
    assert r.status_code == 201, r.text
    assert sim.messages(ALICE, "Inbox")[0].subject == "message 4"


def test_rerender_off_returns_the_imported_bytes(ca: TestCA) -> None:
    sim = start(ca, rerender=False)
    try:
        original = sample_mime(n=5)
        mid = sim.add_message(ALICE, "Inbox", original)
        with client(ca) as s:
            assert s.get(f"{sim.base_url}/users/{ALICE}/messages/{mid}/$value").content == original
    finally:
        sim.__exit__(None, None, None)


# ----------------------------------------------------------------------------------------------- fault injection


def test_fault_injection(sim: GraphSimulator, http: requests.Session) -> None:
    inbox = f"{sim.base_url}/users/{ALICE}/mailFolders/inbox"
    sim.fail_next("GET", "/mailFolders/inbox", 503, times=2)
    first, second = http.get(inbox), http.get(inbox)
    assert (first.status_code, second.status_code) == (503, 503) and first.headers["Retry-After"] == "1"
    assert http.get(inbox).status_code == 200

    sim.fail_next("POST", "/messages", 0, drop_connection=True)
    with pytest.raises(requests.ConnectionError):
        http.post(f"{inbox}/messages", json=json_message("lost request"))
    assert sim.messages(ALICE, "Inbox") == []  # dropped before anything was applied

    sim.fail_next("POST", "/messages", 0, drop_connection=True, after=True)
    tagged = json_message("lost reply", extended=[{"id": "Integer 0x0E07", "value": "1"},
                                                  {"id": TAG, "value": "intent-7"}])
    with pytest.raises(requests.ConnectionError):
        http.post(f"{inbox}/messages", json=tagged)
    found = http.get(f"{inbox}/messages", params={
        "$filter": f"singleValueExtendedProperties/any(ep: ep/id eq '{TAG}' and ep/value eq 'intent-7')"}).json()
    assert [m["subject"] for m in found["value"]] == ["lost reply"]  # applied: the connector settles by its tag

    mid = found["value"][0]["id"]
    sim.fail_next("PATCH", mid, 504, after=True)
    assert http.patch(f"{sim.base_url}/users/{ALICE}/messages/{mid}", json={"isRead": False}).status_code == 504
    assert sim.messages(ALICE, "Inbox")[0].is_read is False

    sim.fail_next("GET", quote("/mailFolders/drafts"), 500)
    batch = http.post(f"{sim.base_url}/$batch", json={"requests": [
        {"id": "1", "method": "GET", "url": f"/users/{ALICE}/mailFolders/drafts"},
        {"id": "2", "method": "GET", "url": f"/users/{ALICE}/mailFolders/inbox"}]}).json()
    assert {r["id"]: r["status"] for r in batch["responses"]} == {"1": 500, "2": 200}


# -- mailbox import/export API (graph_export.py) ---------------------------------------------------------------


def box_items(sim: GraphSimulator, http: requests.Session, address: str, folder: str = "Inbox") -> dict[str, str]:
    """The import/export API's view of a folder: changeKey -> item id, through the user's primaryMailboxId."""
    box = http.get(f"{sim.base_url}/users/{address}/settings/exchange").json()["primaryMailboxId"]
    assert re.fullmatch(r"MBX:[0-9a-f]{8}@[0-9a-f]{8}", box)
    items, _, _ = all_pages(http, f"{sim.base_url}/admin/exchange/mailboxes/{box}/folders/{folder}/items"
                                  f"?$select=changeKey")
    return {item["changeKey"]: item["id"] for item in items}


def test_export_import_round_trip_keeps_the_item_and_refuses_what_the_docs_refuse(
        sim: GraphSimulator, http: requests.Session, ca: TestCA) -> None:
    """exportItems (at most 20 ids, an error per unknown id) streams the whole stored item; an import session's URL
    takes it without an Authorization header, creates it as it was (not a draft) under a new id in the folder named
    by the API's own folder id, and stops working once the session expires."""
    first = sim.add_message(ALICE, "Inbox", sample_mime(n=1), is_read=True, flagged=True, categories=["Blue category"])
    sim.update_message(ALICE, first, extended={TAG: "old-tag"})
    box = http.get(f"{sim.base_url}/users/{ALICE}/settings/exchange").json()["primaryMailboxId"]
    api = f"{sim.base_url}/admin/exchange/mailboxes/{box}"
    (item_id,) = box_items(sim, http, ALICE).values()
    moved = http.post(f"{sim.base_url}/users/{ALICE}/messages/{quote(item_id, safe='')}/move", json={})
    assert moved.json()["error"]["code"] == "ErrorInvalidIdMalformed", "the mail API refuses the other API's ids"
    assert http.post(f"{api}/exportItems", json={"itemIds": [item_id] * 21}).status_code == 400
    value = http.post(f"{api}/exportItems", json={"itemIds": [item_id, "EDSVnothingheremmmmmmmAAA="]}).json()["value"]
    assert value[0]["itemId"] == item_id and base64.b64decode(value[0]["data"])
    assert value[1]["error"]["code"] == "ErrorItemNotFound" and "data" not in value[1]

    bob_box = http.get(f"{sim.base_url}/users/{BOB}/settings/exchange").json()["primaryMailboxId"]
    folders, _, _ = all_pages(http, f"{sim.base_url}/admin/exchange/mailboxes/{bob_box}/folders")
    archive = next(f["id"] for f in folders if f["wellKnownName"] == "archive")
    session = http.post(f"{sim.base_url}/admin/exchange/mailboxes/{bob_box}/createImportSession")
    assert session.status_code == 200 and "authtoken=" in session.json()["importUrl"]
    body = {"FolderId": archive, "Mode": "create", "Data": value[0]["data"]}
    anonymous = client(ca, token=None)
    assert http.post(session.json()["importUrl"], json=body).status_code == 401, "no Authorization header allowed"
    assert anonymous.post(session.json()["importUrl"], json={**body, "ItemId": item_id}).status_code == 400
    created = anonymous.post(session.json()["importUrl"], json=body)
    assert created.status_code == 200 and created.json()["itemId"] != item_id
    (copy,) = sim.messages(BOB, "Archive")
    original = sim.messages(ALICE, "Inbox")[0]
    assert (copy.is_draft, copy.is_read, copy.flag_status, copy.categories, copy.received, copy.attachments,
            copy.extended, replace(copy.render_input(), item_id="")) == (
        False, True, "flagged", ["Blue category"], original.received, original.attachments, original.extended,
        replace(original.render_input(), item_id=""))
    assert copy.change_key() == created.json()["changeKey"]
    sim.expire_import_sessions()
    assert anonymous.post(session.json()["importUrl"], json=body).status_code == 401
    assert len(sim.messages(BOB, "Archive")) == 1


def test_tenant_without_the_import_export_permission_gets_403(ca: TestCA) -> None:
    sim = start(ca, import_export=False)
    try:
        with client(ca) as http:
            box = http.get(f"{sim.base_url}/users/{ALICE}/settings/exchange").json()["primaryMailboxId"]
            for method, path in (("GET", "/folders"), ("POST", "/exportItems"), ("POST", "/createImportSession")):
                answer = http.request(method, f"{sim.base_url}/admin/exchange/mailboxes/{box}{path}", json={})
                assert (answer.status_code, answer.json()["error"]["code"]) == (403, "ErrorAccessDenied"), path
    finally:
        sim.__exit__(None, None, None)
