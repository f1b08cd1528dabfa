"""ClickHouse's hourly rollup without a server (sinks/clickhouse_rollup.py): where a
range is cut between the rollup and ``events`` (whole days on ClickHouse, whole hours
elsewhere), which sorting keys allow it, and its statements on a cluster (local tables
under Distributed ones sharded so that every version of a key is on one shard; the view
on each server's ``events_local``). tests/integration/test_clickhouse_rollup.py runs them."""

from __future__ import annotations

from datetime import UTC, datetime

from eventrouter.sinks.clickhouse import split_keys
from eventrouter.sinks.clickhouse_cluster import ClusterLayout
from eventrouter.sinks.clickhouse_rollup import ddl as rollup_ddl
from eventrouter.sinks.clickhouse_rollup import (
    dirty_days_sql,
    keeps_days,
    marker_ddl,
    paths_array,
    paths_missing_sql,
)
from eventrouter.store import rollup

NOW = datetime(2026, 12, 7, 3, 25, 10, tzinfo=UTC)


def test_a_range_is_cut_on_whole_hours_or_whole_days():
    since = datetime(2026, 12, 1, 22, 30, tzinfo=UTC)
    hours = rollup.split(since, None, NOW)
    assert (hours.start, hours.end) == (
        datetime(2026, 12, 1, 23, tzinfo=UTC),
        datetime(2026, 12, 7, 3, tzinfo=UTC),
    )
    days = rollup.split(since, None, NOW, unit=86400)
    assert (days.start, days.end) == (
        datetime(2026, 12, 2, tzinfo=UTC),
        datetime(2026, 12, 7, tzinfo=UTC),
    )
    midnight = datetime(2026, 12, 2, tzinfo=UTC)
    assert rollup.split(midnight, None, NOW, unit=86400).start == midnight
    # Not one whole day inside: events alone.
    assert rollup.split(NOW.replace(hour=1), None, NOW, unit=86400) is None


def test_only_a_sorting_key_holding_the_day_gets_a_rollup():
    assert keeps_days("toDate(timestamp), source, type, event, message_id", split_keys)
    assert keeps_days("source, toDate( timestamp ), message_id", split_keys)
    assert not keeps_days("source, message_id", split_keys)
    assert not keeps_days("toStartOfHour(timestamp), source, message_id", split_keys)


def test_dirty_days_bounds_are_literals_of_dates():
    sql = dirty_days_sql(datetime(2026, 12, 1).date(), datetime(2026, 12, 7).date())
    assert "day >= toDate('2026-12-01') AND day <= toDate('2026-12-07')" in sql
    assert "WHERE m >= t" in sql
    assert " WHERE day" not in dirty_days_sql()


def test_the_rollup_on_a_cluster():
    layout = ClusterLayout(cluster="er_shards", database="analytics", replicated=True)
    statements = [sql for table in rollup_ddl(ttl=86400 * 30) for sql in layout.create(table)]
    assert len(statements) == 18
    hourly_local, hourly = statements[4], statements[5]
    users_local, users = statements[6], statements[7]
    paths_local, paths = statements[8], statements[9]
    recorded_local, recorded = statements[10], statements[11]
    users_paths_local, users_paths = statements[12], statements[13]
    user_days_local, user_days = statements[14], statements[15]
    user_days_record_local, user_days_record = statements[16], statements[17]
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics.events_hourly_paths"
        "_local', '{replica}', version) PARTITION BY toYYYYMM(hour) "
        "ORDER BY (path, hour, type, event, source, value) "
        "TTL toDateTime(hour) + INTERVAL 2592000 SECOND" in paths_local
    )
    # Every version of a key on one shard (FINAL), as events_hourly.
    assert paths.endswith("`events_hourly_paths_local`, toUInt32(hour))")
    assert "ORDER BY (day, path) TTL toDateTime(day) + INTERVAL 2592000 SECOND" in recorded_local
    assert recorded.endswith("`events_paths_compacted_local`, rand())")
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics.events_users_paths"
        "_local', '{replica}', version) PARTITION BY toYYYYMM(day) ORDER BY (path, day, value) "
        "TTL toDateTime(day) + INTERVAL 2592000 SECOND" in users_paths_local
    )
    # A day's states of one path and value on one shard (FINAL), as events_users.
    assert users_paths.endswith("`events_users_paths_local`, toUInt32(day))")
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics.events_user_days"
        "_local', '{replica}', version) PARTITION BY toYYYYMM(day) "
        "ORDER BY (day, event, user_hash) TTL toDateTime(day) + INTERVAL 2592000 SECOND"
        in user_days_local
    )
    # Every version of a day's rows on one shard, as events_users.
    assert user_days.endswith("`events_user_days_local`, toUInt32(day))")
    assert "ORDER BY day TTL toDateTime(day) + INTERVAL 2592000 SECOND" in user_days_record_local
    assert user_days_record.endswith("`events_user_days_compacted_local`, rand())")
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics.events_users_local'"
        in users_local
    )
    assert "TTL toDateTime(day) + INTERVAL 2592000 SECOND" in users_local
    assert users.endswith("`events_users_local`, toUInt32(day))")
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics.events_hourly_local'"
        in hourly_local
    )
    assert "TTL toDateTime(hour) + INTERVAL 2592000 SECOND" in hourly_local
    assert hourly.endswith("`events_hourly_local`, toUInt32(hour))")
    view = marker_ddl(layout)
    assert view.startswith(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS `analytics`.`events_dirty_mv` ON CLUSTER "
        "`er_shards` TO `analytics`.`events_dirty_local` AS SELECT"
    )
    assert view.endswith("FROM `analytics`.`events_local` GROUP BY day")


def test_paths_missing_quotes_every_path_and_bounds_by_date():
    """Paths are validated (``check_rollup_paths``) and quoted anyway."""
    listed = paths_array(["properties.plan", "properties.a'b\\"])
    assert listed == "['properties.plan', 'properties.a\\'b\\\\']"
    sql = paths_missing_sql(listed, datetime(2026, 12, 1).date(), datetime(2026, 12, 7).date())
    assert f"ARRAY JOIN {listed} AS p" in sql and f"has({listed}, path)" in sql
    assert sql.count("day >= toDate('2026-12-01') AND day <= toDate('2026-12-07')") == 2
    assert "WHERE day" not in paths_missing_sql("[:path]")


def test_an_edge_that_ends_at_midnight_is_bounded_by_the_day_before():
    """``range_hint``: ``timestamp < until`` bounds ``toDate(timestamp)`` by the day of
    the last moment before ``until`` (a range ending at midnight reads no day more)."""
    from clickhouse_sqlalchemy.drivers.native.base import dialect

    from eventrouter.sinks.clickhouse_store import ClickHouseDialect, Flavour

    store = ClickHouseDialect("clickhouse+native://default:@127.0.0.1:9000/x")

    def hint(since: datetime, until: datetime, datetime64: bool) -> list[str]:
        store._flavour = Flavour(datetime64=datetime64, json_extract=False)
        compiled = [
            str(c.compile(dialect=dialect(), compile_kwargs={"literal_binds": True}))
            for c in store.range_hint(since, until)
        ]
        return [sql.split("toDate(")[-1] for sql in compiled]

    since = datetime(2026, 11, 7, 9, 58, 54, tzinfo=UTC)
    midnight = datetime(2026, 11, 8, tzinfo=UTC)
    assert hint(since, midnight, False) == [
        "toDateTime('2026-11-07 09:58:54', 'UTC'))",
        "toDateTime('2026-11-07 23:59:59', 'UTC'))",
    ]
    assert hint(since, midnight, True)[1] == "toDateTime64('2026-11-07 23:59:59.999', 3, 'UTC'))"
    later = datetime(2026, 11, 8, 0, 0, 1, tzinfo=UTC)
    assert hint(since, later, False)[1] == "toDateTime('2026-11-08 00:00:00', 'UTC'))"
