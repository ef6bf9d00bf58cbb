"""``/v1/transforms``: submit a scientist's transform (scientist), list them (reader)."""

from __future__ import annotations

from fastapi import APIRouter

from service.http.auth import Reader, Scientist
from service.http.deps import CoreDep
from service.http.schemas import TransformIn, TransformOut
from transforms.registry import Transform

__all__ = ["router"]

router = APIRouter(prefix="/v1/transforms", tags=["transforms"])


def transform_out(t: Transform) -> TransformOut:
    return TransformOut(id=t.code_hash, name=t.name, kind=t.kind, inputs=dict(t.inputs), outputs=dict(t.outputs))


@router.post("", status_code=201, response_model=TransformOut)
def add_transform(body: TransformIn, core: CoreDep, _: Scientist) -> TransformOut:
    """Check and compile a transform; its id is the hash of its code (a new code is a new id)."""
    return transform_out(core.add_transform(body.name, body.source, body.inputs, body.outputs,
                                            body.kind, body.max_size))


@router.get("", response_model=list[TransformOut])
def list_transforms(core: CoreDep, _: Reader) -> list[TransformOut]:
    """The transforms submitted to this service (built-in ones are not listed)."""
    return [transform_out(t) for _, t in sorted(core.catalog.transforms().items())]
