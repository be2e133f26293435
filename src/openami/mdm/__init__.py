"""Meter data management: ingest, validation/estimation (VEE), storage of readings."""
