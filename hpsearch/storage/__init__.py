"""The storage seam: opening a storage (PostgreSQL, journal file, SQLite, gRPC proxy), one queue backend
class per storage behind one protocol (hpsearch.storage.protocol), every SQL statement, every
Optuna private name (hpsearch.storage.optuna_internals), locks, heartbeats and bulk reads."""
