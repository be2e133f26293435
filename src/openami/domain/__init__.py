"""Pure domain types: meters, topology, readings, events; imports nothing of ours."""
