"""REST API (FastAPI): routers, auth dependencies, problem+json errors."""
