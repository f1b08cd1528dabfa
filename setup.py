"""The compiled part of the build: setup.cfg holds the metadata, this file only the one
C extension, ``eventrouter._scan`` (router_core/_scan.c; router_core/scan.py explains it).

It is optional: without a C compiler or Python's headers, the build prints a warning,
leaves the module out, and eventrouter runs the same pure-Python code it always had.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("eventrouter._scan", ["router_core/_scan.c"], optional=True)])
