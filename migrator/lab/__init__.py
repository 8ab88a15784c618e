"""Tools that build local test labs (Dovecot servers, corpora); used by scripts/ and tests/, never by the core."""
