"""``/v1/tokens``: create tokens (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from service.http.auth import Admin
from service.http.deps import TokensDep
from service.http.schemas import TokenIn, TokenOut

__all__ = ["router"]

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenOut)
def create_token(body: TokenIn, tokens: TokensDep, _: Admin) -> TokenOut:
    """A new token of a role; the secret is in this response only."""
    return TokenOut(token=tokens.create(body.role, body.note), role=body.role)
