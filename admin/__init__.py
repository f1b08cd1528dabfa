"""The htmx + Jinja2 admin dashboard, served under ``/admin`` (see issue #5)."""
