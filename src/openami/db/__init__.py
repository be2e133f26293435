"""Storage: engine and sessions, tables, Alembic migrations, repositories, bulk ingest."""
