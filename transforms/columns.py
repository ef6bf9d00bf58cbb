"""Columns as Numba sees them: flat values, plus int64 offsets for jagged columns.

Arrow list arrays are (offsets, values) already, so conversion is zero-copy for numbers
(booleans are bit-packed in Arrow and are unpacked to one byte each). A jagged column of n
events has ``offsets`` of length n + 1 starting at 0; event i owns
``values[offsets[i]:offsets[i + 1]]``.

A column that may hold nulls (missing values, e.g. ``Muon_pt[0]`` of an event without muons)
has a ``valid`` mask of one bool per value (per event for a flat column, per entry for a
jagged one; the lists themselves are never null); its type is ``nullable``. In Arrow it is a
validity bitmap, written only when the column has a null (the values stay zero-copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["Column", "ColumnType", "column_type_of"]

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


@dataclass(frozen=True, slots=True)
class ColumnType:
    """The type of a column: a NumPy dtype name (``"float32"``, ``"bool"``, ...), jaggedness,
    and whether its values (the entries, for a jagged column) may be null."""

    dtype: str
    jagged: bool = False
    nullable: bool = False

    def __post_init__(self) -> None:
        if np.dtype(self.dtype).kind not in NUMERIC_KINDS:
            raise ValueError(f"column type must be numeric or bool, got {self.dtype!r}")

    def __str__(self) -> str:
        value = f"?{self.dtype}" if self.nullable else self.dtype  # awkward's notation
        return f"var * {value}" if self.jagged else value

    def arrow_type(self) -> pa.DataType:
        value = pa.from_numpy_dtype(np.dtype(self.dtype))
        return pa.large_list(pa.field("item", value, nullable=self.nullable)) if self.jagged else value


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
    """Values (1-d NumPy array), for a jagged column int64 offsets starting at 0, and for a
    nullable column a bool ``valid`` mask as long as the values (False: null)."""

    values: np.ndarray
    offsets: np.ndarray | None = None
    valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 1:
            raise ValueError(f"values must be 1-d, got shape {self.values.shape}")
        if self.valid is not None and (self.valid.dtype != np.bool_ or self.valid.shape != self.values.shape):
            raise ValueError(f"valid must be a bool array of the values' shape {self.values.shape}")
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
        return ColumnType(self.values.dtype.name, self.jagged, self.valid is not None)

    @classmethod
    def from_arrow(cls, array: pa.Array | pa.ChunkedArray) -> Column:
        """A Column from an Arrow array of numbers/booleans or lists of them; null values (or
        entries) give a ``valid`` mask, null lists are refused (ValueError)."""
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            if array.null_count:
                raise ValueError("columns with missing lists cannot be used by kernels")
            offsets = np.asarray(array.offsets, dtype=np.int64)
            start, stop = int(offsets[0]), int(offsets[-1])
            values, valid = _values(array.values.slice(start, stop - start))
            return cls(values, offsets - start if start else offsets, valid)
        values, valid = _values(array)
        return cls(values, None, valid)

    def to_arrow(self) -> pa.Array:
        """The Arrow array: the values, or a ``large_list`` of them (zero-copy for numbers),
        with a validity bitmap where some value is null."""
        mask = None if self.valid is None or self.valid.all() else ~self.valid
        values = pa.array(self.values, mask=mask)
        if self.offsets is None:
            return values
        return pa.LargeListArray.from_arrays(pa.array(self.offsets), values, type=self.type.arrow_type())

    def counts(self) -> np.ndarray:
        """Entries per event (jagged columns only)."""
        if self.offsets is None:
            raise ValueError("a flat column has no per-event counts")
        return np.diff(self.offsets)


def _values(array: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Values and validity (None without nulls); a null's value is 0 (False for booleans)."""
    valid = None
    if array.null_count:
        valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
        array = array.fill_null(False if pa.types.is_boolean(array.type) else 0)
    if pa.types.is_boolean(array.type):
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.bool_), valid
    return array.to_numpy(zero_copy_only=True), valid
