"""``/healthz`` and ``/metrics``: no token needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.http.deps import MetricsDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request) -> dict[str, str]:
    """Liveness: the process answers and its core is started."""
    return {"status": "ok" if request.app.state.core is not None else "starting"}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics of this gateway and its core."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
