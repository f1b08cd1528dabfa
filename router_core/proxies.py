"""What a request says about the browser's side of any proxies in front of us.

``X-Forwarded-*`` headers are believed only from peers in ``server.trusted_proxies``:
anyone else could write them. Of a list, the last value is the one the nearest proxy
(the trusted peer) wrote; a proxy that appends leaves the client's own value first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network

import falcon.asgi

IPNetwork = IPv4Network | IPv6Network


def networks(entries: Sequence[str]) -> list[IPNetwork]:
    """``server.trusted_proxies`` (validated by the config loader) as networks."""
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def from_trusted_proxy(req: falcon.asgi.Request, trusted: Sequence[IPNetwork]) -> bool:
    if not trusted:
        return False
    try:
        peer = ipaddress.ip_address(req.remote_addr or "")
    except ValueError:
        return False
    return any(peer in network for network in trusted)


def public_scheme(req: falcon.asgi.Request, trusted: Sequence[IPNetwork]) -> str:
    """``https`` or ``http``, as the browser reached the first proxy (or us)."""
    if req.scheme == "https":
        return "https"
    forwarded = (req.get_header("X-Forwarded-Proto") or "").split(",")[-1].strip().lower()
    if forwarded in ("http", "https") and from_trusted_proxy(req, trusted):
        return forwarded
    return req.scheme


def public_host(req: falcon.asgi.Request, trusted: Sequence[IPNetwork]) -> str:
    """``host[:port]`` as the browser addressed it: ``X-Forwarded-Host`` from a trusted
    proxy, else the ``Host`` header (with its port, which ``req.host`` drops)."""
    forwarded = (req.get_header("X-Forwarded-Host") or "").split(",")[-1].strip()
    if forwarded and from_trusted_proxy(req, trusted):
        return forwarded
    return req.get_header("Host") or req.netloc


def public_origin(req: falcon.asgi.Request, trusted: Sequence[IPNetwork]) -> str:
    """``scheme://host[:port]``: where a browser reaches this server."""
    return f"{public_scheme(req, trusted)}://{public_host(req, trusted)}"
