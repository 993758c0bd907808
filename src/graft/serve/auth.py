"""Nobody gets in by accident: a bearer token on /predict and /metrics, compared in constant time,
and no open endpoint on a network address unless asked for (`--insecure`)."""

from __future__ import annotations

import hmac
import ipaddress
import os

from ..errors import ConfigError

TOKEN_ENV = "GRAFT_SERVE_TOKEN"


def resolve_token(token: str | None) -> str | None:
    """--token, else the GRAFT_SERVE_TOKEN environment variable; an empty one is no token."""
    return token or os.environ.get(TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    """Whether `host` only answers this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a network address


def check_exposure(host: str, token: str | None, insecure: bool) -> str | None:
    """A ConfigError for a network address without a token (unless `insecure`); the warning to
    print at start when an open endpoint is published on purpose."""
    if token or is_loopback(host):
        return None
    if not insecure:
        raise ConfigError(
            f"--host {host} publishes the model to the network without a token: set --token "
            f"(or {TOKEN_ENV}), or pass --insecure to serve it open to anyone who can reach it"
        )
    return f"--insecure: anyone who can reach {host} can use this model (no token)"


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an `Authorization` header carries the bearer token (always, when none is set)."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
