"""The stores' shared ground: the stored columns, engines, the query layer.

:mod:`.schema` names the stored columns once; :mod:`.db` makes SQLAlchemy engines the
way the stores need them; :mod:`.query` reads any SQL store (the query API and the
dashboard); :mod:`.admin_tables` keeps the admin's small tables (suppressions,
signed-out sessions, used confirmations) beside the events.
"""
