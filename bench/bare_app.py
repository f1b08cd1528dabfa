"""The baseline for the ingestion benchmark: a Falcon ASGI app that does nothing.

``POST /v1/track`` and ``POST /v1/batch`` read the whole request body and answer
``{"success":true}``: no parsing, validation, dispatch or storage. bench/ingest.py serves
it with the same gunicorn worker class and worker count as ``eventrouter serve``, so the
gap between the two is what eventrouter's own work costs on this machine.
"""

from __future__ import annotations

import falcon
import falcon.asgi

SUCCESS = b'{"success":true}'


class Accept:
    """Reads the full body and acknowledges it, like an ingestion endpoint that stores nothing."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await req.stream.read()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = SUCCESS


app = falcon.asgi.App()
app.add_route("/v1/track", Accept())
app.add_route("/v1/batch", Accept())
