"""Host names in addresses and URLs, written once for every door that prints or binds one."""

from __future__ import annotations


def bracketed(host: str) -> str:
    """A host as it stands before `:port` in an address or URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host
