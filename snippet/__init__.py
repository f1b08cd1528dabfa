"""The JS loader snippet and analytics library, served as a CDN origin."""

from eventrouter.snippet.loader import loader_snippet

__all__ = ["loader_snippet"]
