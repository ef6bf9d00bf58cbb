"""One router per resource: health and metrics, datasets, transforms, recipes (and their
ranges), jobs (and their leases), job outputs, tokens."""

from __future__ import annotations

from fastapi import APIRouter

from service.http.routes import datasets, health, jobs, outputs, recipes, tokens, transforms

__all__ = ["ROUTERS"]

# Jobs first: FastAPI tries routes in order, and a worker fleet's leases and finishes are most
# of the requests (the prefixes do not overlap, so the order changes nothing else).
ROUTERS: tuple[APIRouter, ...] = (
    jobs.router, outputs.router, health.router, datasets.router, transforms.router, recipes.router, tokens.router,
)
