"""The Python client of the batch API (:mod:`.client`) and ``eventrouter upload``
(:mod:`.upload`), which sends an NDJSON or JSON file through it."""
