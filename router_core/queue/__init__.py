"""Queue mode: the broker between the edge and the workers.

:mod:`.broker` declares the topology and encodes messages; :mod:`.redis_transport`
is kombu's Redis transport made loss-free; :mod:`.spool` holds accepted events on the
edge's disk while the broker is away; :mod:`.worker` feeds each sink from its queue;
:mod:`.deadletters` lists and replays what a sink refused. On a ``kafka://`` queue,
:mod:`.kafka_transport`, :mod:`.kafka_worker` and :mod:`.kafka_log` do the same over
confluent-kafka, imported only then. Only ``eventrouter serve`` with ``[queue]`` and
``eventrouter worker`` import this package (it loads kombu).
"""
