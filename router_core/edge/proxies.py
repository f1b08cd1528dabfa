"""What a request says about the browser's side of any proxies in front of us.

``X-Forwarded-*`` headers are believed only from peers in ``server.trusted_proxies``:
anyone else could write them. Of a list, the last value is the one the nearest proxy
(the trusted peer) wrote; a proxy that appends leaves the client's own value first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import falcon.asgi

#: Addresses remembered per process (each is checked against every network once).
_CACHE_LIMIT = 10_000
#: Longer than any address with a short zone index (``fe80::1%eth0``): not an address.
_MAX_ADDRESS_LENGTH = 64


class TrustedProxies:
    """``server.trusted_proxies`` (validated by the config loader), and what they say."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]
        self._cache: dict[str, bool] = {}

    def trusts(self, address: str | None) -> bool:
        """Whether ``address`` is one of the proxies (remembered: on the ingestion path)."""
        if not self.networks or address is None:
            return False
        trusted = self._cache.get(address)
        if trusted is None:
            # An X-Forwarded-For hop is whatever the client wrote: only addresses are
            # remembered (no junk, no 10 kB zone index), or anyone could fill the cache.
            if len(address) > _MAX_ADDRESS_LENGTH:
                return False
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            trusted = any(ip in network for network in self.networks)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[address] = trusted
        return trusted

    def client_ip(self, req: falcon.asgi.Request) -> str | None:
        """The browser's address: the peer, or, behind trusted proxies, the nearest hop
        of ``X-Forwarded-For`` that is not one of them."""
        return self.client_ip_of(req.remote_addr, req.get_header("X-Forwarded-For"))

    def client_ip_of(self, peer: str | None, forwarded: str | None) -> str | None:
        """:meth:`client_ip` of a peer address and its ``X-Forwarded-For`` header."""
        if not self.trusts(peer):
            return peer
        if not forwarded:
            return peer
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer

    def scheme(self, req: falcon.asgi.Request) -> str:
        """``https`` or ``http``, as the browser reached the first proxy (or us)."""
        if req.scheme == "https":
            return "https"
        forwarded = (req.get_header("X-Forwarded-Proto") or "").split(",")[-1].strip().lower()
        if forwarded in ("http", "https") and self.trusts(req.remote_addr):
            return forwarded
        return req.scheme

    def host(self, req: falcon.asgi.Request) -> str:
        """``host[:port]`` as the browser addressed it: ``X-Forwarded-Host`` from a trusted
        proxy, else the ``Host`` header (with its port, which ``req.host`` drops)."""
        forwarded = (req.get_header("X-Forwarded-Host") or "").split(",")[-1].strip()
        if forwarded and self.trusts(req.remote_addr):
            return forwarded
        return req.get_header("Host") or req.netloc

    def origin(self, req: falcon.asgi.Request) -> str:
        """``scheme://host[:port]``: where a browser reaches this server."""
        return f"{self.scheme(req)}://{self.host(req)}"
