"""migrator: crash-safe email migration between IMAP, Exchange (EWS) and Microsoft Graph endpoints."""

__version__ = "0.1.0"
