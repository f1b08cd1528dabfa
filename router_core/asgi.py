"""ASGI entry point for any server: ``uvicorn router_core.asgi:app``.

Configuration comes from ``$EVENTROUTER_CONFIG`` (or the embedded default).
"""

from router_core.app import create_app

app = create_app()
