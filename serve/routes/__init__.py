"""Thin FastAPI routers: parse, call the Gateway / ArtifactStore, shape the response."""
