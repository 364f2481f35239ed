"""PostgreSQL's binary COPY format decoded into Arrow record batches, a column at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["BinaryCopyDecoder", "BinaryCopyError"]

# The file header: signature, flags (int32), header extension length (int32), extension.
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = len(_SIGNATURE) + 8
# A field count of -1 ends the data of one COPY.
_TRAILER = b"\xff\xff"
# PostgreSQL counts microseconds from 2000-01-01 UTC, Arrow from 1970-01-01; its infinities
# are the extremes of int8.
_EPOCH_SHIFT_US = 946_684_800_000_000
_INFINITIES = (np.iinfo(np.int64).min, np.iinfo(np.int64).max)
# numeric's sign word: positive, negative (NaN and the infinities have no decimal128 form).
_POSITIVE, _NEGATIVE = 0x0000, 0x4000
# A numeric's base-10,000 digits are read four at a time (below 10**16 < 2**54), each group
# scaled by a power of ten of at most 10**18 (< 2**60) into 128 bits.
_TENS = np.array([10**k for k in range(19)], np.uint64)
_MANTISSA_LIMITS = np.array([2**54 // 10**k for k in range(18)], np.uint64)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


class BinaryCopyError(ValueError):
    """The bytes are not binary COPY rows of the expected columns."""


class _Block:
    """A block of COPY's bytes, and its big-endian integers of each width at every offset."""

    def __init__(self, data: np.ndarray) -> None:
        self.bytes = data
        self.size = data.size
        # Overlapping, unaligned views: a gather at any offsets is one numpy take.
        self._views = {
            width: np.ndarray((max(data.size - width + 1, 0),), f">i{width}", data, 0, (1,))
            for width in (2, 4, 8)
        }

    def ints(self, at: np.ndarray, width: int) -> np.ndarray:
        """The signed integers of `width` bytes at offsets `at` (each within the block)."""
        values: np.ndarray = self._views[width][at].astype(np.int64)
        return values


@dataclass(frozen=True, slots=True)
class _Fields:
    """Where one column's values lie in a block: their lengths (-1 for NULL) and offsets."""

    lengths: np.ndarray
    offsets: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.lengths >= 0


def _validity(fields: _Fields) -> tuple[pa.Buffer | None, int]:
    valid = fields.valid
    nulls = int(valid.size - np.count_nonzero(valid))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


def _integers(block: _Block, fields: _Fields, arrow: pa.DataType) -> pa.Array:
    """int2, int4 or int8 (each value says which by its length) as `arrow` integers."""
    values = np.zeros(fields.lengths.size, np.int64)
    for width in (2, 4, 8):
        sized = fields.lengths == width
        if sized.any():
            values[sized] = block.ints(fields.offsets[sized], width)
    validity, nulls = _validity(fields)
    data = pa.py_buffer(values.astype(arrow.to_pandas_dtype()))
    return pa.Array.from_buffers(arrow, values.size, [validity, data], nulls)


def _booleans(block: _Block, fields: _Fields, arrow: pa.DataType) -> pa.Array:
    values = np.packbits(block.bytes[fields.offsets] != 0, bitorder="little")
    validity, nulls = _validity(fields)
    return pa.Array.from_buffers(
        arrow, fields.offsets.size, [validity, pa.py_buffer(values)], nulls
    )


def _timestamps(block: _Block, fields: _Fields, arrow: pa.DataType) -> pa.Array:
    """timestamptz (int8 microseconds since 2000) as Arrow's microseconds since 1970."""
    raw = block.ints(fields.offsets, 8)
    if np.isin(raw[fields.valid], _INFINITIES).any():
        raise BinaryCopyError("an infinite timestamp has no Arrow form")
    validity, nulls = _validity(fields)
    data = pa.py_buffer(raw + _EPOCH_SHIFT_US)
    return pa.Array.from_buffers(arrow, raw.size, [validity, data], nulls)


def _strings(block: _Block, fields: _Fields, arrow: pa.DataType) -> pa.Array:
    """text (UTF-8, the connection's encoding) gathered into one Arrow string array."""
    lengths = np.maximum(fields.lengths, 0)
    ends = np.cumsum(lengths)
    offsets = np.zeros(lengths.size + 1, np.int32)
    offsets[1:] = ends
    total = int(ends[-1]) if ends.size else 0
    # Byte k of the result is byte (start of its value + k - start of its value in the result).
    index = np.repeat(fields.offsets - offsets[:-1], lengths) + np.arange(total)
    validity, nulls = _validity(fields)
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(block.bytes[index])]
    return pa.Array.from_buffers(arrow, lengths.size, buffers, nulls)


def _times_power_of_ten(mantissa: np.ndarray, power: np.ndarray) -> tuple[np.ndarray, ...]:
    """mantissa × 10**power as the (low, high) 64-bit halves of 128-bit integers, for
    mantissa < 2**54 and 0 ≤ power ≤ 18 (so 10**power < 2**60)."""
    factor = _TENS[power]
    m0, m1 = mantissa & _MASK32, mantissa >> _SHIFT32
    f0, f1 = factor & _MASK32, factor >> _SHIFT32
    p00, p01, p10 = m0 * f0, m0 * f1, m1 * f0
    middle = (p00 >> _SHIFT32) + (p01 & _MASK32) + (p10 & _MASK32)
    low = (p00 & _MASK32) | ((middle & _MASK32) << _SHIFT32)
    high = m1 * f1 + (p01 >> _SHIFT32) + (p10 >> _SHIFT32) + (middle >> _SHIFT32)
    return low, high


def _digit_group(
    block: _Block, fields: _Fields, group: int, ndigits: np.ndarray, weight: np.ndarray, scale: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits 4·group … 4·group + 3 of each numeric × 10**scale, as 128-bit halves, and
    whether that was exact within the 64-bit steps (where not, Python's integers take over)."""
    count = np.clip(ndigits - 4 * group, 0, 4)
    # The group's eight bytes in one read; at the block's end, read earlier and shifted.
    at = fields.offsets + 8 + 8 * group
    read = np.minimum(at, block.size - 8)
    raw = block.ints(read, 8).view(np.uint64) << ((at - read) * 8).astype(np.uint64)
    # Its `count` digits, the last one lowest.
    digits = np.where(count > 0, raw >> (16 * (4 - count)).astype(np.uint64), 0)
    mantissa = (
        (digits & 0xFFFF)
        + ((digits >> 16) & 0xFFFF) * 10_000
        + ((digits >> 32) & 0xFFFF) * 100_000_000
        + (digits >> 48) * 1_000_000_000_000
    ).astype(np.uint64)
    # The last digit is worth 10**power after scaling.
    power = scale + 4 * (weight - 4 * group - count + 1)
    below = (power < 0) & (count > 0)
    exact = np.ones(count.size, bool)
    if below.any():
        # Digits under 10**-scale: zeros, or the value is not a decimal of this scale.
        divisor = _TENS[np.clip(-power, 0, 18)]
        exact &= ~below | (mantissa % divisor == 0)
        mantissa = np.where(below, mantissa // divisor, mantissa)
    # Beyond 10**18, the mantissa is multiplied first while it stays under 2**54.
    above = np.clip(power - 18, 0, 17)
    exact &= mantissa < _MANTISSA_LIMITS[above]
    mantissa = mantissa * _TENS[above]
    low, high = _times_power_of_ten(mantissa, np.clip(power, 0, 18))
    return low, high, exact


def _exact_unscaled(digits: list[int], weight: int, scale: int) -> int:
    """A numeric's value × 10**scale, exactly, from its base-10,000 digits."""
    total = 0
    for j, digit in enumerate(digits):
        exponent = scale + 4 * (weight - j)
        if exponent >= 0:
            total += digit * 10**exponent
        elif digit % 10**-exponent:
            raise BinaryCopyError(f"a numeric has more than {scale} decimals")
        else:
            total += digit // 10**-exponent
    return total


def _decimals(block: _Block, fields: _Fields, arrow: pa.DataType) -> pa.Array:
    """numeric as decimal128(p, s), exactly: refused when a value has more than s decimals
    or more than p digits."""
    scale, precision = arrow.scale, arrow.precision
    n = fields.offsets.size
    valid = fields.valid
    # The header: four int16, ndigits, weight (of the first digit, in powers of 10,000),
    # sign and display scale; then the base-10,000 digits.
    head = block.ints(fields.offsets, 8)
    ndigits = np.where(valid, head >> 48, 0)
    weight = (head << 16) >> 48
    sign = (head >> 16) & 0xFFFF
    if ((sign != _POSITIVE) & (sign != _NEGATIVE) & valid).any():
        raise BinaryCopyError("NaN and infinite numerics have no decimal128 form")
    low = np.zeros(n, np.uint64)
    high = np.zeros(n, np.uint64)
    exact = valid.copy()
    for group in range(-(-int(ndigits.max(initial=0)) // 4)):
        group_low, group_high, group_exact = _digit_group(
            block, fields, group, ndigits, weight, scale
        )
        exact &= group_exact
        summed = low + group_low
        high += group_high + (summed < low).astype(np.uint64)
        low = summed
    # At most `precision` digits (the rest, one by one, say which value has more).
    bound = 10**precision
    top_high, top_low = np.uint64(bound >> 64), np.uint64(bound & (2**64 - 1))
    exact &= (high < top_high) | ((high == top_high) & (low < top_low))
    negative = sign == _NEGATIVE
    # Two's complement of the 128-bit value.
    negated_low = ~low + np.uint64(1)
    high = np.where(negative, ~high + (negated_low == 0).astype(np.uint64), high)
    low = np.where(negative, negated_low, low)
    halves = np.empty((n, 2), np.uint64)
    halves[:, 0] = np.where(exact, low, 0)
    halves[:, 1] = np.where(exact, high, 0)
    # The rest (too many decimals, or past 10**16 where the 64-bit steps could overflow):
    # one by one, exactly.
    for row in np.flatnonzero(valid & ~exact).tolist():
        at = int(fields.offsets[row]) + 8
        count = int(ndigits[row])
        digits = block.ints(np.arange(at, at + 2 * count, 2), 2).tolist()
        value = _exact_unscaled(digits, int(weight[row]), scale)
        if value >= bound:
            raise BinaryCopyError(f"a numeric has more than {precision} digits")
        value = -value if negative[row] else value
        halves[row] = np.frombuffer(value.to_bytes(16, "little", signed=True), np.uint64)
    validity, nulls = _validity(fields)
    return pa.Array.from_buffers(arrow, n, [validity, pa.py_buffer(halves)], nulls)


def _floats(block: _Block, fields: _Fields, arrow: pa.DataType) -> pa.Array:
    """numeric as float64: the nearest double to the exact decimal."""
    exact = _decimals(block, fields, pa.decimal128(38, 18))
    # Through its text: Arrow's cast from decimal128 to float64 divides by a power of ten in
    # floating point (1e-06 would come out 1.0000000000000002e-06); its parsing rounds once.
    return pc.cast(pc.cast(exact, pa.string()), arrow)


_Decode = Callable[[_Block, _Fields, pa.DataType], pa.Array]


def _column_decoder(arrow: pa.DataType) -> tuple[_Decode, Callable[[np.ndarray], np.ndarray]]:
    """How a column of `arrow` type is decoded, and which value lengths it accepts."""
    if pa.types.is_int64(arrow) or pa.types.is_int32(arrow):
        if pa.types.is_int64(arrow):
            return _integers, lambda n: (n == 8) | (n == 4) | (n == 2) | (n == -1)
        return _integers, lambda n: (n == 4) | (n == 2) | (n == -1)
    if pa.types.is_boolean(arrow):
        return _booleans, lambda n: (n == 1) | (n == -1)
    if pa.types.is_timestamp(arrow) and arrow.unit == "us":
        return _timestamps, lambda n: (n == 8) | (n == -1)
    if pa.types.is_string(arrow):
        return _strings, lambda n: n >= -1
    if pa.types.is_decimal128(arrow) and 0 <= arrow.scale <= 18:
        # A header of four int16, then the digits.
        return _decimals, lambda n: (n == -1) | ((n >= 8) & (n % 2 == 0))
    if pa.types.is_float64(arrow):
        return _floats, lambda n: (n == -1) | ((n >= 8) & (n % 2 == 0))
    raise TypeError(f"no binary COPY decoder gives {arrow}")


class BinaryCopyDecoder:
    """Rows of binary COPY (one COPY or several one after the other) as record batches of
    `schema`, whose columns are the COPY's in order.

    Rows are found without a Python step per row: every offset where a row could start (its
    field count) is walked column by column with numpy, and the rows are the chain of walks
    from the block's first byte (checked link by link). Each column is then gathered at once.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._columns = [_column_decoder(field.type) for field in schema]
        self._count = len(schema).to_bytes(2, "big")
        self._header_due = True

    @property
    def columns(self) -> str:
        return ", ".join(self._schema.names)

    def decode(self, data: bytes) -> tuple[list[pa.RecordBatch], int]:
        """The record batches of the complete rows at the start of `data`, and how many of its
        bytes they (and any COPY header and trailer) took."""
        b = np.frombuffer(data, np.uint8)
        used = 0
        batches = []
        while True:
            if self._header_due:
                taken = self._header(data, used)
                if not taken:
                    break
                used += taken
                self._header_due = False
            if data[used : used + 2] == _TRAILER:
                used += 2
                self._header_due = True
                continue
            found = self._rows(b[used:])
            if found is None:
                break
            batch, taken = found
            batches.append(batch)
            used += taken
        return batches, used

    @staticmethod
    def _header(data: bytes, at: int) -> int:
        if len(data) - at < _HEADER:
            return 0
        if data[at : at + len(_SIGNATURE)] != _SIGNATURE:
            raise BinaryCopyError("not the start of a binary COPY")
        extension = int.from_bytes(data[at + _HEADER - 4 : at + _HEADER], "big")
        if len(data) - at < _HEADER + extension:
            return 0
        return _HEADER + extension

    def _walk(
        self, block: _Block, starts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[_Fields]]:
        """Rows walked column by column from `starts`: whether each is a complete row of the
        expected columns, where it ends, and its fields."""
        complete = np.ones(starts.size, bool)
        at = starts + 2
        fields = []
        for _, accepts in self._columns:
            complete &= at + 4 <= block.size
            # A NULL's offset, and any offset of a start that is no row, is 0: gathers at
            # it stay inside the block.
            at = np.where(complete, at, 0)
            lengths = block.ints(at, 4)
            complete &= accepts(lengths)
            fields.append(_Fields(lengths, np.where(lengths >= 0, at + 4, 0)))
            at = at + 4 + np.maximum(lengths, 0)
        complete &= at <= block.size
        return complete, at, fields

    def _rows(self, b: np.ndarray) -> tuple[pa.RecordBatch, int] | None:
        # Every offset holding the field count and an acceptable length of the first field:
        # the rows' starts, and (rarely) some bytes of values.
        hi, lo = self._count
        starts = np.flatnonzero(b[1:] == lo)
        starts = starts[(b[starts] == hi) & (starts + 6 <= b.size)]
        block = _Block(b)
        starts = starts[self._columns[0][1](block.ints(starts + 2, 4))]
        if not starts.size or starts[0] != 0:
            return None
        complete, ends, fields = self._walk(block, starts)
        if not complete[0]:
            return None
        chosen = np.flatnonzero(complete)
        rows = chosen[self._chain(starts[chosen], ends[chosen])]
        # Usually every start up to the block's last, incomplete row: slices, not copies.
        pick: slice | np.ndarray = slice(0, rows.size) if rows[-1] == rows.size - 1 else rows
        columns = [
            decode(block, _Fields(f.lengths[pick], f.offsets[pick]), field.type)
            for (decode, _), f, field in zip(self._columns, fields, self._schema, strict=True)
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self._schema), int(ends[rows[-1]])

    @staticmethod
    def _chain(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """The indices of the rows that follow one another from the first: the starts reached
        from starts[0] by the row ends."""
        if (ends[:-1] == starts[1:]).all():
            # No false start survived the walk: every one is the next row's (the usual case).
            return np.arange(starts.size)
        place = np.searchsorted(starts, ends)
        hit = place < starts.size
        hit[hit] = starts[place[hit]] == ends[hit]
        following = np.where(hit, place, -1)
        # A false start inside a row is reached by no true row; dropping the starts reached
        # from none of the others, again and again, leaves the chain.
        member = np.ones(starts.size, bool)
        for _ in range(4):
            reached = np.zeros(starts.size, bool)
            reached[0] = True
            reached[following[member & hit]] = True
            if (reached == member).all():
                break
            member = reached
        chain = np.flatnonzero(member)
        if (following[chain[:-1]] == chain[1:]).all() and following[chain[-1]] == -1:
            return chain
        # A false start reached from another: follow the links one by one.
        links = following.tolist()
        walked = [0]
        while links[walked[-1]] >= 0:
            walked.append(links[walked[-1]])
        return np.array(walked)
