"""The analytics library as the CDN origin serves it: within its size budget, stamped
with its name and version, and the same bytes on every build."""

from __future__ import annotations

import eventrouter
from eventrouter.snippet import library

#: What a page downloads, compressed, at most.
BUDGET = 8 * 1024


def test_the_library_fits_its_size_budget():
    asset = library.build.__wrapped__()
    gzip_size = len(asset.encoded["gzip"])
    brotli_size = len(asset.encoded["br"])
    figures = f"{len(asset.identity)} B minified, {gzip_size} B gzip, {brotli_size} B brotli"
    assert gzip_size <= BUDGET, f"over the {BUDGET} B budget: {figures}"
    assert brotli_size <= BUDGET, f"over the {BUDGET} B budget: {figures}"


def test_the_library_says_its_name_and_version():
    text = library.build.__wrapped__().identity.decode()
    assert text.startswith(f"/*! {library.LIBRARY_NAME} {eventrouter.__version__} ")
    assert f'"{library.LIBRARY_NAME}"' in text
    assert f'"{eventrouter.__version__}"' in text
    assert "__LIBRARY_" not in text


def test_the_library_is_minified():
    source = library.SOURCE.read_text(encoding="utf-8")
    text = library.build.__wrapped__().identity.decode()
    assert len(text) < len(source) * 0.6, "comments and indentation should be gone"
    assert "// " not in text
    assert text.count("/*") == 1, "only the /*! header comment is kept"


def test_every_build_gives_the_same_bytes():
    first, second = library.build.__wrapped__(), library.build.__wrapped__()
    assert first.identity == second.identity
    assert first.encoded == second.encoded
    assert first.digest == second.digest
