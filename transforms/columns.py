"""Columns as Numba sees them: flat values, plus int64 offsets for jagged columns.

Arrow list arrays are (offsets, values) already, so conversion is zero-copy for numbers
(booleans are bit-packed in Arrow and are unpacked to one byte each). A jagged column of n
events has ``offsets`` of length n + 1 starting at 0; event i owns
``values[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["Column", "ColumnType", "column_type_of"]

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


@dataclass(frozen=True, slots=True)
class ColumnType:
    """The type of a column: a NumPy dtype name (``"float32"``, ``"bool"``, ...) and jaggedness."""

    dtype: str
    jagged: bool = False

    def __post_init__(self) -> None:
        if np.dtype(self.dtype).kind not in NUMERIC_KINDS:
            raise ValueError(f"column type must be numeric or bool, got {self.dtype!r}")

    def __str__(self) -> str:
        return f"var * {self.dtype}" if self.jagged else self.dtype

    def arrow_type(self) -> pa.DataType:
        value = pa.from_numpy_dtype(np.dtype(self.dtype))
        return pa.large_list(pa.field("item", value, nullable=False)) if self.jagged else value


def column_type_of(dtype: pa.DataType) -> ColumnType | None:
    """The ColumnType for an Arrow type, or None if kernels cannot use it (strings, structs, ...)."""
    jagged = pa.types.is_list(dtype) or pa.types.is_large_list(dtype)
    value = dtype.value_type if jagged else dtype
    if not (pa.types.is_integer(value) or pa.types.is_floating(value) or pa.types.is_boolean(value)):
        return None
    if pa.types.is_float16(value):
        return None
    return ColumnType(np.dtype(value.to_pandas_dtype()).name, jagged)


@dataclass(frozen=True, slots=True)
class Column:
    """Values (1-d NumPy array) and, for a jagged column, int64 offsets starting at 0."""

    values: np.ndarray
    offsets: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 1:
            raise ValueError(f"values must be 1-d, got shape {self.values.shape}")
        if self.offsets is not None:
            if self.offsets.dtype != np.int64 or self.offsets.ndim != 1 or len(self.offsets) == 0:
                raise ValueError("offsets must be a non-empty 1-d int64 array")
            if self.offsets[0] != 0 or self.offsets[-1] != len(self.values):
                raise ValueError(
                    f"offsets must run from 0 to len(values)={len(self.values)}, "
                    f"got {self.offsets[0]}..{self.offsets[-1]}"
                )

    @property
    def jagged(self) -> bool:
        return self.offsets is not None

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.offsets is not None else len(self.values)

    @property
    def type(self) -> ColumnType:
        return ColumnType(self.values.dtype.name, self.jagged)

    @classmethod
    def from_arrow(cls, array: pa.Array | pa.ChunkedArray) -> Column:
        """A Column from an Arrow array of numbers/booleans or lists of them (no nulls)."""
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if array.null_count:
            raise ValueError("columns with missing values cannot be used by kernels")
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            offsets = np.asarray(array.offsets, dtype=np.int64)
            start, stop = int(offsets[0]), int(offsets[-1])
            values = _values(array.values.slice(start, stop - start))
            return cls(values, offsets - start if start else offsets)
        return cls(_values(array))

    def to_arrow(self) -> pa.Array:
        """The Arrow array: the values, or a ``large_list`` of them (zero-copy for numbers)."""
        values = pa.array(self.values)
        if self.offsets is None:
            return values
        return pa.LargeListArray.from_arrays(pa.array(self.offsets), values, type=self.type.arrow_type())

    def counts(self) -> np.ndarray:
        """Entries per event (jagged columns only)."""
        if self.offsets is None:
            raise ValueError("a flat column has no per-event counts")
        return np.diff(self.offsets)


def _values(array: pa.Array) -> np.ndarray:
    if array.null_count:
        raise ValueError("columns with missing values cannot be used by kernels")
    if pa.types.is_boolean(array.type):
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.bool_)
    return array.to_numpy(zero_copy_only=True)
