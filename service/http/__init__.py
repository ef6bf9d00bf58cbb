"""The HTTP gateway: the FastAPI app, its routes, authentication, limits, middleware, metrics,
the mapping from errors to responses, the serving of range bodies and the uvicorn server."""
