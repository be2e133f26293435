"""Audit chain, security events, keys and policy against both databases."""
