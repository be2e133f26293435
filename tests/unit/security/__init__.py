"""Unit tests of the security package."""
