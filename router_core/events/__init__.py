"""Events: the wire model and the immutable commands it becomes.

:mod:`.model` holds the inbound shapes (the Segment HTTP Tracking API, the original
``/track`` payload, :class:`~.model.BatchBody`); :mod:`.normalise` turns one of them,
with its :class:`~.normalise.Arrival` (source, client address, receive time), into a
:class:`~.commands.Command`, which is what every stage and sink sees. :mod:`.ids` cuts
message ids; :mod:`.ipanon` anonymises ``context.ip``. This package imports nothing
else of eventrouter's but :mod:`eventrouter.errors` and :mod:`eventrouter.config`.
"""
