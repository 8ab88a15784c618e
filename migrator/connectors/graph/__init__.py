"""Microsoft Graph connector: Exchange Online mailboxes as source or target, app-only access through msal.

Modules: client (HTTP, tokens, per-mailbox limits, error translation), mailbox (the connector protocol),
mime (MIME to Graph message JSON and back to flags).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from migrator.config import EndpointConfig
from migrator.connectors.base import Probe
from migrator.connectors.graph.client import GraphClient, GraphError, translate
from migrator.connectors.graph.mailbox import GraphMailbox
from migrator.model import Login

# Exchange Online's largest message (https://learn.microsoft.com/en-us/office365/servicedescriptions/
# exchange-online-service-description/exchange-online-limits#message-limits); tenants often set less.
DEFAULT_MAX_MESSAGE_SIZE = 150 * 2**20


class GraphEndpoint:
    """One tenant through Graph; every mailbox is reached with the app's own token (application access)."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.client = GraphClient(config)
        self.max_message_size = int(config.options.get("max_message_size") or DEFAULT_MAX_MESSAGE_SIZE)

    def _check_mailbox(self, address: str) -> None:
        try:
            self.client.get_json(self.client.user_url(address, "?$select=id,mail"), address)
        except GraphError as exc:
            raise translate(exc, f"{self.client.describe()} mailbox {address}") from None

    def probe(self, on_behalf_of: str | None = None) -> Probe:
        """A token, then the mailbox (or any user) read with it: proves authority, TLS, secret and consent."""
        if on_behalf_of:
            self._check_mailbox(on_behalf_of)
        else:
            try:
                self.client.get_json(f"{self.client.base_url}/users?$top=1&$select=id", "-")
            except GraphError as exc:
                raise translate(exc, f"{self.client.describe()} users") from None
        return Probe(self.client.base_url, "tls", frozenset({"GRAPH", "DELTA", "IMMUTABLEID"}), bool(on_behalf_of))

    def list_mailboxes(self) -> list[str]:
        """The `mail` address of every user of the tenant that has one, sorted, for a starting mailboxes.csv.

        One tenant-wide listing, `GET /users?$select=id,mail,userPrincipalName&$top=999` (999 is the largest
        page the users list takes; https://learn.microsoft.com/en-us/graph/api/user-list), following
        @odata.nextLink. Users whose `mail` is empty are skipped: no mailbox, or none Exchange has published
        an address for. Guests (a userPrincipalName holding `#EXT#`) are skipped too: their mailbox, if any,
        lives in their own tenant. A `mail` address is no proof of a mailbox (a mail user has one too):
        `discover` stops on such a row, naming it, and the row is removed by hand.

        The listing cannot tell a shared (or room, or equipment) mailbox from a person's: Graph says so only
        per user, in `mailboxSettings.userPurpose` (https://learn.microsoft.com/en-us/graph/api/resources/
        mailboxsettings), and lists neither kind as such; Exchange Online PowerShell does
        (`Get-Mailbox -RecipientTypeDetails SharedMailbox`). Shared mailboxes therefore come out as plain rows:
        mark them in the dependency file. Needs the User.Read.All application permission.
        """
        url = f"{self.client.base_url}/users?$select=id,mail,userPrincipalName&$top=999"
        try:
            users = list(self.client.pages(url, "-"))
        except GraphError as exc:
            raise translate(exc, f"{self.client.describe()} users (listing them needs the User.Read.All "
                                 f"application permission)") from None
        found: dict[str, str] = {}
        for user in users:
            mail = str(user.get("mail") or "").strip()
            if mail and "#EXT#" not in str(user.get("userPrincipalName") or "").upper():
                found.setdefault(mail.lower(), mail)
        return [found[key] for key in sorted(found)]

    @contextmanager
    def session(self, login: Login, *, write: bool) -> Iterator[GraphMailbox]:
        self._check_mailbox(login.address)
        mailbox = GraphMailbox(self.client, login.address, write=write, max_message_size=self.max_message_size)
        try:
            yield mailbox
        finally:
            mailbox.close()
