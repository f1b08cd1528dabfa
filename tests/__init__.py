"""eventrouter's tests, in four folders by what they need: ``unit`` (in-process, no
services; ``make test-fast``), ``integration`` (services, processes, SDKs), ``browser``
(Chromium) and ``faults`` (fault injection). tests/README.md says which folder holds what
and how to run each; the support modules here are imported as ``tests.<name>``."""
