"""bench/dashboard.py's pure parts: its command line, the views it asks for (issue 24's
URLs), the data model's determinism, the generator's frames, when loaded data is reused,
and the report. Nothing here measures anything: the timings below are made up."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest

from tests.helpers import load_bench_script


@pytest.fixture(scope="module")
def dashboard() -> ModuleType:
    return load_bench_script("dashboard")


def test_defaults_are_ten_million_events_on_every_store(dashboard) -> None:
    args = dashboard.parse_args([])
    assert args.events == 10_000_000
    assert args.stores == ["sqlite", "postgres", "clickhouse"]
    assert (args.requests, args.reload, args.json) == (20, False, None)
    args = dashboard.parse_args(["--stores", " postgres,sqlite ", "--events", "300000"])
    assert (args.stores, args.events) == (["postgres", "sqlite"], 300_000)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--stores", "sqlite,mysql"], "--stores: unknown mysql"),
        (["--stores", ","], "--stores"),
        (["--events", "0"], "--events"),
        (["--requests", "0"], "--requests"),
        (["--events", "many"], "--events"),
    ],
)
def test_a_bad_option_is_refused_naming_it(dashboard, capsys, argv, named) -> None:
    with pytest.raises(SystemExit) as exited:
        dashboard.parse_args(argv)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def _views(dashboard) -> dict[str, object]:
    return {view.name: view for view in dashboard.endpoints(lambda: "")}


def _params(path: str) -> tuple[str, dict[str, list[str]]]:
    split = urlsplit(path)
    return split.path, parse_qs(split.query)


def test_every_view_of_issue_24_is_asked_for_with_the_agreed_urls(dashboard) -> None:
    views = _views(dashboard)
    assert len(views) == len(dashboard.endpoints(lambda: ""))  # names are unique
    for span in ("24h", "7d", "30d"):
        assert _params(views[f"chart {span}"].path) == ("/admin/chart", {"range": [span]})
        path, params = _params(views[f"breakdown by properties.plan {span}"].path)
        assert (path, params) == (
            "/admin/breakdown",
            {"range": [span], "dimension": ["properties.plan"]},
        )
        assert _params(views[f"breakdown by event {span}"].path)[1]["dimension"] == ["event"]
    assert _params(views["explorer, event + property filter"].path) == (
        "/admin/events",
        {"range": ["30d"], "event": ["Product Added"], "properties.plan": ["pro"]},
    )
    assert _params(views["user page (busiest user)"].path) == (
        "/admin/user",
        {"user_id": ["user-00000"]},
    )
    for interval in ("day", "week", "month"):
        assert _params(views[f"active users by {interval}"].path) == (
            "/admin/active-users",
            {"range": ["30d"], "interval": [interval]},
        )
    assert _params(views["active users by day, by properties.plan"].path)[1]["by"] == [
        "properties.plan"
    ]
    path, params = _params(views["funnel, 3 steps, window 1d"].path)
    assert path == "/admin/funnels"
    assert params == {
        "range": ["30d"],
        "step": ["Product Viewed", "Product Added", "Order Completed"],
        "window": ["1d"],
    }
    assert _params(views["funnel, 3 steps, by properties.plan"].path)[1]["by"] == [
        "properties.plan"
    ]
    for period in ("day", "week"):
        assert _params(views[f"retention by {period}"].path) == (
            "/admin/retention",
            {
                "range": ["30d"],
                "first": ["Signed Up"],
                "returning": ["Product Viewed"],
                "period": [period],
            },
        )
    # Funnels are held to 2 s, everything else to 300 ms; only issue 24's new views may
    # answer 404 ("not built") without failing the run.
    targets = {name: view.target_ms for name, view in views.items()}
    assert {name for name, ms in targets.items() if ms == 2000} == {
        "funnel, 3 steps, window 1d",
        "funnel, 3 steps, by properties.plan",
    }
    assert set(targets.values()) == {300.0, 2000.0}
    new = {name for name, view in views.items() if view.new_view}
    assert {_params(views[name].path)[0] for name in new} == {
        "/admin/active-users",
        "/admin/funnels",
        "/admin/retention",
    }


def test_the_second_page_is_the_first_pages_older_link(dashboard) -> None:
    page = '<p><a class="older" href="/admin/events?range=30d&amp;cursor=abc%3D">Older »</a>'
    (second,) = [v for v in dashboard.endpoints(lambda: page) if callable(v.path)]
    assert second.path() == "/admin/events?range=30d&cursor=abc%3D"
    (second,) = [v for v in dashboard.endpoints(lambda: "<p>no events</p>") if callable(v.path)]
    with pytest.raises(RuntimeError, match="Older"):
        second.path()


def test_the_data_is_the_same_whoever_generates_it_and_in_any_order(dashboard) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    total = dashboard.CHUNK + 30  # one full chunk and 30 events
    one = dashboard.EventFactory(total, start)
    last = one.chunk(1)
    first = one.chunk(0)
    other = dashboard.EventFactory(total, start)
    assert other.chunk(0) == first and other.chunk(1) == last
    assert (len(first), len(last)) == (dashboard.CHUNK, 30)
    assert dashboard.EventFactory(total, start, seed=1).chunk(1) != last
    # In time order (minutes apart at this size, beyond the arrival's jitter of 20 to
    # 420 ms), inside the span before the load.
    moments = [micros for _, micros, _, _ in first + last]
    assert moments == sorted(moments)
    low = start.timestamp() * 1e6
    high = (start + dashboard.SPAN).timestamp() * 1e6 + 1e6
    assert all(low <= micros <= high for micros in moments)


def test_generated_frames_become_commands_as_the_edge_makes_them(dashboard) -> None:
    start = datetime.now(UTC) - timedelta(days=1)
    out = io.BytesIO()
    dashboard.emit_payloads(25, start, out)
    data = out.getvalue()
    size = int.from_bytes(data[:4], "big")
    assert len(data) == 4 + size  # one chunk
    payloads = msgspec.msgpack.Decoder(list[dashboard.Payload]).decode(data[4:])
    assert payloads == dashboard.EventFactory(25, start).chunk(0)
    commands = dashboard.to_commands(payloads)
    assert len(commands) == 25
    _, micros, source, ip = payloads[0]
    row = commands[0].row()
    assert row["received_at"] == datetime.fromtimestamp(micros / 1e6, UTC)
    assert row["source"] == source and row["context"]["ip"] == ip
    assert row["message_id"]  # the edge gives each its id
    assert {c.row()["type"] for c in commands} <= {"track", "identify", "page"}
    again = dashboard.EventFactory(25, start).commands(0, 25)
    assert [c.row()["properties"] for c in again] == [c.row()["properties"] for c in commands]


def test_loaded_data_is_reused_only_when_it_fits(dashboard) -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    marker = {"model": dashboard.DATA_MODEL}
    fresh = dashboard.TableState(1_000, now - timedelta(days=29.5), now - timedelta(hours=1))
    assert dashboard.reusable(fresh, 1_000, marker, now) is None
    assert dashboard.reusable(fresh, 500, marker, now) is None  # more than asked: kept
    assert "1,000 events stored, 2,000 wanted" in dashboard.reusable(fresh, 2_000, marker, now)
    assert dashboard.reusable(None, 1, marker, now) == "no events stored"
    # An earlier script's data (6.5 days, no model in its marker) is never taken for
    # 30 days of it.
    assert "another data model" in dashboard.reusable(fresh, 1_000, {}, now)
    stale = dashboard.TableState(1_000, now - timedelta(days=29, hours=23, minutes=45), now)
    assert "leaving the last 30d" in dashboard.reusable(stale, 1_000, marker, now)


def _timing(dashboard, name: str, ms: list[float], **kwargs):
    view = _views(dashboard)[name]
    return dashboard.Timing("sqlite", view, "/", ms=ms, statuses=[200] * len(ms), **kwargs)


def test_the_report_gives_median_p95_and_max_beside_each_target(dashboard) -> None:
    twenty = [float(ms) for ms in range(1, 21)]
    met = _timing(dashboard, "chart 30d", twenty)
    assert (met.median, met.p95, met.met) == (10.5, 19.0, True)
    slow = _timing(dashboard, "breakdown by properties.plan 30d", [400.0, 310.0, 200.0])
    assert slow.met is False
    funnel = _timing(dashboard, "funnel, 3 steps, window 1d", [1900.0])
    assert funnel.met is True  # within the funnels' 2 s
    missing = _timing(dashboard, "retention by day", [], error=dashboard.NOT_BUILT)
    assert missing.ok and missing.met is None
    broken = _timing(dashboard, "user page (busiest user)", [5.0])
    broken.statuses = [500]
    assert not broken.ok and broken.met is False

    lines = dashboard.table([met, slow, funnel, missing, broken])
    assert lines[0] == "| store | view | median ms | p95 ms | max ms | target | met |"
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| sqlite | chart 30d | 10.5 | 19.0 | 20.0 | ≤ 300 ms | yes |" in lines
    assert "| sqlite | breakdown by properties.plan 30d | 310.0 | 400.0 | 400.0 | ≤ 300 ms " in (
        "\n".join(lines)
    )
    assert lines[3].endswith("| **no** |")
    assert "| ≤ 2,000 ms | yes |" in lines[4]
    assert lines[5] == "| sqlite | retention by day | - | - | - | ≤ 300 ms | not built |"
    assert "**failed**: status 500" in lines[6]
    assert dashboard.summary([met, slow, funnel, missing, broken]) == (
        "sqlite: 2 of 4 views met their target (1 not built)"
    )
    document = [t.as_json() for t in (met, missing, broken)]
    json.dumps(document, allow_nan=False)
    assert document[0]["p95_ms"] == 19.0 and document[0]["met"] is True
    assert document[1]["status"] == "not built" and document[1]["median_ms"] is None
    assert document[2]["status"] == "failed"


def test_percentiles_are_nearest_rank(dashboard) -> None:
    assert dashboard.percentile([3.0], 95) == 3.0
    assert dashboard.percentile([5.0, 1.0, 4.0, 2.0, 3.0], 95) == 5.0
    assert dashboard.percentile([float(n) for n in range(100, 0, -1)], 95) == 95.0
