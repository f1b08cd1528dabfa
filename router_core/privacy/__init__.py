"""Privacy: the suppression list, erasure of a user's data, and their CLI.

:mod:`.suppressions` keeps the ids whose new events are never stored;
:mod:`.erasure` deletes a user's stored events from every store that holds them;
:mod:`.cli` is ``eventrouter privacy``. The admin's privacy page uses the same two.
"""
