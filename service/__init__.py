"""service: the FastAPI gateway — routes, auth, limits, error mapping, /metrics. Thin: each
route parses, calls one ``vdata`` function and returns a schema."""
