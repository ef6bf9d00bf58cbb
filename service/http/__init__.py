"""The HTTP gateway: the FastAPI app, its routes, authentication, limits, middleware, metrics,
the mapping from errors to responses, the serving of range bodies and the uvicorn server."""

from service._extras import HTTP, require_server

require_server("the service gateway (service.http)", HTTP)
