"""The edge: what faces the network, before any event reaches the bus.

An event's way in, in order: :mod:`.proxies` (which client sent it), :mod:`.keys`
(its source's writeKey), :mod:`.limits` (the shape of its body), the per-source rate
limits (:mod:`.ratelimit` over :mod:`.buckets`), then :mod:`.ingest` (the tracking
resources) hands the batch to :mod:`.coalesce`, which joins the requests of one
event-loop turn into one dispatch on the bus.

Also here: the admin sign-in (:mod:`.auth`, :mod:`.sessions`, :mod:`.throttle`), the
read side of the store over HTTP (:mod:`.query_api`) and the OpenAPI document
(:mod:`.openapi`). The edge imports from ``events``, ``bus`` and ``store``; nothing
below it imports the edge.
"""
