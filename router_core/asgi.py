"""ASGI entry point for any server: ``uvicorn eventrouter.asgi:app``.

Configuration comes from ``$EVENTROUTER_CONFIG`` (or the embedded default).
"""

from eventrouter.app import create_app

app = create_app()
