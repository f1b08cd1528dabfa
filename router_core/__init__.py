"""eventrouter: a self-hosted, Segment-compatible analytics event router."""

__version__ = "0.1.0"
