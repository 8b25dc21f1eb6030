"""Host names in addresses and URLs, written once for every door that prints or binds one."""

from __future__ import annotations


def bracketed(host: str) -> str:
    """A host as it stands before `:port` in an address or URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def is_loopback_host(host: str) -> bool:
    """Whether a host is this machine (127.0.0.0/8, ::1, localhost): for --host and loopback outcalls."""
    import ipaddress

    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
