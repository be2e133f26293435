"""Publish/subscribe bus: in-process adapter (NATS JetStream later)."""
