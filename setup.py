"""The compiled part of the build: setup.cfg holds the metadata, this file only the C
extensions: ``eventrouter._scan`` (router_core/_scan.c; router_core/scan.py explains it)
and ``eventrouter.sinks._native`` (sinks/_native.c; the Native format in
sinks/clickhouse.py).

They are optional: without a C compiler or Python's headers, the build prints a warning,
leaves them out, and eventrouter runs the same pure-Python code it always had.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("eventrouter._scan", ["router_core/_scan.c"], optional=True),
        Extension("eventrouter.sinks._native", ["sinks/_native.c"], optional=True),
    ]
)
