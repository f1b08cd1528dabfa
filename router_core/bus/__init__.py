"""The bus: pipeline stages and sinks as pluggy plugins.

:mod:`.hookspecs` is the contract every plugin implements; :mod:`.bus` builds the
plugin manager from config and dispatches each batch through the stages and out to
the sinks, each isolated with a timeout; :mod:`.sink` is the base class a sink
subclasses. See docs/plugins.md.
"""
