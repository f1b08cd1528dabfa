"""A store that cannot answer a read is a 503 with ``Retry-After`` naming the driver's
error, on every server store: PostgreSQL's driver raises PEP 249 errors (SQLAlchemy's
``DBAPIError``), ClickHouse's its own, which its engine turns into ``StoreUnavailable``
(a shard down behind a Distributed table is tests/cluster's; here a server that is not
listening and a database that does not exist). Anything else stays an unexpected
error."""

from __future__ import annotations

import asyncio
import secrets
import socket

import pytest

from eventrouter.edge.query_api import read_store
from eventrouter.errors import APIError
from eventrouter.sinks.clickhouse_store import ClickHouseStore
from eventrouter.sinks.postgres_store import PostgresStore
from eventrouter.store.query import EventFilter, EventStore


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def missing_database() -> str:
    return f"eventrouter_missing_{secrets.token_hex(4)}"


STORES = {
    "clickhouse-down": lambda: ClickHouseStore(
        f"clickhouse+native://default:@127.0.0.1:{closed_port()}/default"
    ),
    "clickhouse-no-database": lambda: ClickHouseStore(
        f"clickhouse+native://default:@127.0.0.1:9000/{missing_database()}"
    ),
    "postgres-down": lambda: PostgresStore(
        f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/test"
    ),
    "postgres-no-database": lambda: PostgresStore(
        f"postgresql+psycopg://postgres@127.0.0.1:5432/{missing_database()}"
    ),
}


@pytest.mark.parametrize("make", STORES.values(), ids=STORES.keys())
def test_a_store_that_cannot_answer_is_a_503_naming_the_error(make):
    store = EventStore(make())
    try:
        for method, args in ((store.query, (EventFilter(), 10)), (store.count, (EventFilter(),))):
            with pytest.raises(APIError) as raised:
                asyncio.run(read_store(method, *args))
            error = raised.value
            assert error.status == 503
            body = error.body()
            assert body["code"] == "store_unavailable"
            assert body["message"].startswith("the store cannot be read (")
            assert body["message"].endswith("); retry later")
            assert "()" not in body["message"] and "unknown" not in body["message"]
            assert error.headers == {"Retry-After": "5"}
    finally:
        store.close()
