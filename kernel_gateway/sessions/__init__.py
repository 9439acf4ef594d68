"""The custom kernel manager: sessions (a kernel plus its frontends), the cell queue, REST cell runs and their
outputs, the session manager of one replica, and its background work (leases, eviction)."""
