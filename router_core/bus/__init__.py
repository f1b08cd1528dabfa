"""The bus: pipeline stages and sinks as pluggy plugins.

:mod:`.hookspecs` is the contract every plugin implements; :mod:`.bus` builds the
plugin manager from config and dispatches each batch through the stages and out to
the sinks, each isolated with a timeout; :mod:`.sink` is the base class a sink
subclasses. The mechanics every sink gets from the framework: :mod:`.outlet` (on the
edge, per sink) combines a bounded :mod:`.buffer`, group commit (:mod:`.batcher`) and
the :mod:`.retry` policy; the worker reuses the batch and retry policies. See
docs/plugins.md.
"""
