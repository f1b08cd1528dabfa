"""The docs/plugins.md blocks whose tests start processes (the conformance kit's
concurrent writers), run as written: tests/unit/test_plugin_docs.py only compiles them,
since unit tests start no processes (tests/README.md)."""

from __future__ import annotations

import pytest

from tests.unit.test_plugin_docs import PROCESS_BLOCKS, blocks, run_page

pytestmark = pytest.mark.slow


def test_the_blocks_that_start_processes_run(tmp_path, tmp_path_factory, monkeypatch, capsys):
    assert {block.file for block in blocks("python")} >= PROCESS_BLOCKS
    called = run_page(tmp_path, tmp_path_factory, monkeypatch, processes=True)
    assert called == ["test_the_jsonl_sink_conforms"]
    assert "conformance of sink type 'jsonl'" in capsys.readouterr().out
