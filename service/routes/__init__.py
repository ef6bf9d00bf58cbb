"""One router per resource: health and metrics, datasets, transforms, recipes (and their
ranges), jobs (and their leases), tokens."""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import datasets, health, jobs, recipes, tokens, transforms

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    health.router, datasets.router, transforms.router, recipes.router, jobs.router, tokens.router,
)
