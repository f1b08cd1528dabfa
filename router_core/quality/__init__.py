"""Data quality: tracking plans (:mod:`.plans`) and the ``plan`` and ``violations``
commands (:mod:`.cli`). The tables a store keeps for them (rejected events, the event
catalogue, violation counts) are :mod:`eventrouter.store.quality`; the enforcement on
the edge is the built-in ``quality`` plugin (``plugins/quality.py``).
docs/data-quality.md describes it all."""
