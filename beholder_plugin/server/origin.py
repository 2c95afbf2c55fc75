"""Same-origin writes: which requests may change a run's files (POST config, POST export).

A page on another site cannot read TensorBoard's answers, but it can send a
POST, and through DNS rebinding (its own name made to resolve to 127.0.0.1)
even a same-origin one. Both are told apart by two headers a page cannot set:

- ``Origin``, when present, must name the same host and port as ``Host``, or
  a host listed in ``BEHOLDER_TRUSTED_HOSTS`` (a proxy that rewrites ``Host``,
  such as a notebook's, serves pages of its own name);
- ``Host`` must be one TensorBoard serves on: ``localhost``, an IP address
  (a rebinding page always has its own name in ``Host``), the ``--host``
  TensorBoard was started with, this machine's name, or a name listed in the
  ``BEHOLDER_TRUSTED_HOSTS`` environment variable (comma-separated; ``*``
  trusts every name, for a proxy that checks names itself).

docs/http-api.md says what a deployment behind a proxy must set.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import urllib.parse
from typing import Any

TRUSTED_HOSTS_ENV = "BEHOLDER_TRUSTED_HOSTS"
_ALWAYS = ("localhost", "localhost.localdomain", "ip6-localhost")


def _host_name(netloc: str) -> str:
    """The host of a "host[:port]" (brackets of an IPv6 address removed), lower case."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _is_address(name: str) -> bool:
    """Whether a host name is an IP address literal."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def listed_names(environ: dict[str, str] | None = None) -> frozenset[str]:
    """The host names listed in BEHOLDER_TRUSTED_HOSTS (lower case, ports left out)."""
    environ = os.environ if environ is None else environ
    return frozenset(_host_name(n) for n in environ.get(TRUSTED_HOSTS_ENV, "").split(",") if n.strip())


def trusted_names(flags: Any = None, environ: dict[str, str] | None = None) -> frozenset[str]:
    """The host names writes are accepted for: localhost, --host, this machine's names, the env's list."""
    names = set(_ALWAYS) | listed_names(environ)
    host = getattr(flags, "host", None)
    if isinstance(host, str) and host:
        names.add(_host_name(host))
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower())
    return frozenset(names)


def write_refusal(host: str | None, origin: str | None, trusted: frozenset[str],
                  listed: frozenset[str] = frozenset()) -> str | None:
    """Why a state-changing request with these headers is refused (403), or None to accept it.

    ``trusted``: the host names TensorBoard serves on; ``listed``: those the
    user vouched for in BEHOLDER_TRUSTED_HOSTS, whose pages may also write
    through a proxy that presents another Host.
    """
    if not host:
        return "the request has no Host header"
    name = _host_name(host)
    if not (name in trusted or "*" in trusted or _is_address(name)):
        return (f"writes are accepted only for the host names TensorBoard serves on, not {name!r}; "
                f"list it in {TRUSTED_HOSTS_ENV} to trust it (docs/http-api.md)")
    if origin is not None:
        parts = urllib.parse.urlsplit(origin)
        same = parts.netloc.lower() == host.strip().lower()
        vouched = parts.hostname is not None and (parts.hostname in listed or "*" in listed)
        if parts.scheme not in ("http", "https") or not (same or vouched):
            return f"the request comes from another origin ({origin!r}) than the page it writes to ({host!r})"
    return None
