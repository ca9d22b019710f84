"""Peer discovery (mDNS/DNS-SD and static peer lists).

Nothing is exported yet: until discovery lands, connect the patterns on explicit
endpoints with ``bind=`` / ``connect=`` (see ``shoal.patterns``).
"""

__all__: list[str] = []
