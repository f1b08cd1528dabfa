"""The analytics library as the CDN origin serves it: minified, hashed, precompressed.

``snippet/src/analytics.js`` is the readable source. :func:`build` minifies it with
rjsmin (deterministic, no network, no Node.js), names the result by its SHA-256, and
compresses it once with gzip and brotli at their highest levels, so a request only picks
bytes. The same source always gives the same bytes and the same names, on every server
process and every machine: edges and browsers may cache a versioned URL forever.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import brotli
import rjsmin

import eventrouter

SOURCE = Path(__file__).parent / "src" / "analytics.js"
#: What ``context.library.name`` says in every event the library sends.
LIBRARY_NAME = "analytics-eventrouter"
CONTENT_TYPE = "application/javascript; charset=utf-8"
#: Encodings in order of preference (smallest first).
ENCODINGS = ("br", "gzip")


@dataclass(frozen=True)
class Asset:
    """One file in every encoding, with a strong ETag per encoding (RFC 9110: the
    representations differ, so their validators must too)."""

    name: str
    content_type: str
    identity: bytes
    digest: str
    encoded: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def build(cls, name: str, content_type: str, content: bytes) -> Asset:
        digest = hashlib.sha256(content).hexdigest()[:16]
        encoded = {
            "gzip": gzip.compress(content, compresslevel=9, mtime=0),
            "br": brotli.compress(content, quality=11),
        }
        return cls(name, content_type, content, digest, encoded)

    def body(self, encoding: str | None) -> bytes:
        return self.encoded[encoding] if encoding else self.identity

    def etag(self, encoding: str | None) -> str:
        return f'"{self.digest}-{encoding}"' if encoding else f'"{self.digest}"'


def minify(source: str) -> str:
    """rjsmin keeps ``/*! ... */`` comments: the licence header stays in the output."""
    return rjsmin.jsmin(source, keep_bang_comments=True).strip() + "\n"


@functools.cache
def build() -> Asset:
    """The library, built once per process."""
    source = SOURCE.read_text(encoding="utf-8")
    source = source.replace("__LIBRARY_NAME__", LIBRARY_NAME)
    source = source.replace("__LIBRARY_VERSION__", eventrouter.__version__)
    return Asset.build("analytics.min.js", CONTENT_TYPE, minify(source).encode())
