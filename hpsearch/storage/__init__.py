"""The storage seam: opening a storage (PostgreSQL, journal file, SQLite, gRPC proxy), every SQL statement, locks, heartbeats and bulk reads."""
