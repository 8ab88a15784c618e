"""One exception hierarchy, one class per remedy.

Callers decide what to do next from the class alone: fix the input (UserError), fix the endpoint
(EndpointError), wait and retry (Transient), skip an item/folder/mailbox and record why
(ItemFailed/FolderFailed/MailboxFailed), or stop and ask a person (SafetyStop). Connectors translate
library exceptions into these at their boundary, so nothing above them sees imaplib or socket errors.
"""

from __future__ import annotations


class MigratorError(Exception):
    """Base of every error migrator raises on purpose; `str()` is a one-line, actionable message."""

    exit_code = 1


class UserError(MigratorError):
    """Bad usage or bad input (config, CSV, plan): nothing was changed; fix the input and re-run."""

    exit_code = 2


class EndpointError(MigratorError):
    """An endpoint could not be reached or refused our credentials: nothing was changed."""

    exit_code = 3


class Unreachable(EndpointError):
    """Connection refused, timed out, or the TLS handshake failed."""


class AuthFailed(EndpointError):
    """The server rejected the login; check the user name and the password's env var, file or CSV cell."""


class SafetyStop(MigratorError):
    """Something changed that makes continuing risky (UIDVALIDITY changed, plan edited): a person decides."""

    exit_code = 1


class Transient(MigratorError):
    """A passing failure (dropped connection, server busy): retry with back-off."""


class Throttled(Transient):
    """The server asked us to slow down; wait `retry_after` seconds (0: it did not say). Not a failure.
    `endpoint` is the role ("source", "target") of the server that said so, whose every task then waits."""

    def __init__(self, message: str, retry_after: float, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.endpoint = endpoint


class ItemFailed(MigratorError):
    """One message cannot be copied (too large, refused content); it is recorded and skipped, never retried."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class FolderFailed(MigratorError):
    """One folder cannot be processed now; the rest of the mailbox goes on."""


class MailboxFailed(MigratorError):
    """The whole mailbox job stops (quota full, login refused mid-run); other mailboxes go on."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class LeaseLost(MigratorError):
    """Another worker took over this job; our writes are refused so that two workers never copy one item."""


class StateError(MigratorError):
    """The state store is unusable (locked, full, wrong schema) or inconsistent: the last commit is intact."""

    exit_code = 1
