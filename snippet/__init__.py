"""The JS loader snippet and analytics library, served as a CDN origin (see issue #6)."""
