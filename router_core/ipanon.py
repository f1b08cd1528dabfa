"""IP anonymisation: what becomes of ``context.ip`` (``[privacy] ip``, ``sources[].ip``).

Applied on the edge while a request is normalised, before its events are Commands: the
original address never reaches a pipeline stage, the broker or any sink.

- ``keep``: stored as it came;
- ``truncate``: the host part zeroed, as Google Analytics and PostHog do: an IPv4
  address keeps its /24 (``203.0.113.77`` → ``203.0.113.0``), an IPv6 address its /48
  (``2001:db8:abcd:12::1`` → ``2001:db8:abcd::``). An IPv4-mapped IPv6 address is
  truncated as the IPv4 address it carries. A value that is not an IP address (a
  client may send anything in ``context.ip``) is dropped: it cannot be truncated;
- ``drop``: removed from ``context``.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

KEEP = "keep"
TRUNCATE = "truncate"
DROP = "drop"
IPV4_PREFIX = 24
IPV6_PREFIX = 48


@functools.lru_cache(maxsize=4096)
def truncate(value: str) -> str | None:
    """``value`` with its host part zeroed, or None when it is not an IP address.
    Cached: a busy client sends many requests from one address."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            network = ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False)
            return str(network.network_address)
    return str(ipaddress.IPv4Network((address, IPV4_PREFIX), strict=False).network_address)


def anonymise(value: Any, mode: str) -> str | None:
    """The address to store for ``value`` under ``mode`` (None: store none)."""
    if value is None or mode == DROP:
        return None
    if mode == KEEP:
        return value
    return truncate(value) if isinstance(value, str) else None


def apply(context: dict[str, Any], mode: str) -> None:
    """Anonymise ``context["ip"]`` in place (``context`` belongs to one event)."""
    if mode == KEEP or "ip" not in context:
        return
    ip = anonymise(context["ip"], mode)
    if ip is None:
        del context["ip"]
    else:
        context["ip"] = ip
