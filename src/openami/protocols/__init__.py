"""Protocol stacks (sans-IO cores, thin transports)."""
