"""API routers; every group but ``public`` requires a bearer token."""
