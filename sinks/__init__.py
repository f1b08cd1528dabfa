"""Destinations (observers of the bus). Each module is a plugin registered through the
``eventrouter`` entry-point group, exactly like a third-party sink package."""
