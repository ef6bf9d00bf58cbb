"""Errors of the array layer. ``vdata`` translates them into ``vdata.errors`` in one place.

::

    TransformsError
     ├── ExpressionError       (ValueError) a filter/define expression is refused: names the
     │                          expression, the position and the reason
     ├── TransformCodeError    (ValueError) a scientist's transform source is refused: names
     │                          the line and the reason
     ├── TransformSignatureError (ValueError) declared inputs/outputs do not fit the kernel or
     │                          the columns given
     ├── KernelError           (RuntimeError) a kernel failed while running (user code)
     ├── GeneratorParamError   (ValueError) generator parameters: every problem at once
     └── UnknownName           (KeyError) no transform or generator of that name
"""

from __future__ import annotations

__all__ = [
    "ExpressionError",
    "GeneratorParamError",
    "KernelError",
    "TransformCodeError",
    "TransformSignatureError",
    "TransformsError",
    "UnknownName",
]


class TransformsError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ExpressionError(TransformsError, ValueError):
    def __init__(self, expression: str, reason: str, col: int | None = None) -> None:
        where = f" at column {col + 1}" if col is not None else ""
        super().__init__(f"expression {expression!r}{where}: {reason}")
        self.expression = expression
        self.reason = reason
        self.col = col


class TransformCodeError(TransformsError, ValueError):
    def __init__(self, name: str, reason: str, line: int | None = None) -> None:
        where = f" line {line}" if line is not None else ""
        super().__init__(f"transform {name!r}{where}: {reason}")
        self.name = name
        self.reason = reason
        self.line = line


class TransformSignatureError(TransformsError, ValueError):
    pass


class KernelError(TransformsError, RuntimeError):
    pass


class GeneratorParamError(TransformsError, ValueError):
    def __init__(self, generator: str, problems: list[str]) -> None:
        super().__init__(f"generator {generator!r}: " + "; ".join(problems))
        self.generator = generator
        self.problems = problems


class UnknownName(TransformsError, KeyError):
    pass
