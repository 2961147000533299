"""XDR (RFC 4506) encoder, decoder and declarative type combinators.

Every wire type is declared once as a combinator object (``Struct``, ``Union``, ``Array``…)
and both ``pack`` and ``unpack`` come from that declaration. A struct is a dataclass whose
field annotations carry their XDR types (``seconds: xdr.U32``, ``Annotated[bytes, FH]``,
a nested dataclass, ``X | None`` for ``*X``); ``struct(cls)`` derives its codec from them. The RPC header
(``nasblade.rpc.message``) and the NFS/MOUNT/portmapper programs (``nasblade.nfs.types``)
are built from these. ``xdrlib`` is not used (it is removed in Python 3.13).

Decoding never copies bulk data: variable-length opaques come back as ``memoryview`` slices
of the input record, so a 1 MiB WRITE payload goes from the socket buffer to the block device
without an intermediate ``bytes`` object. Any malformed input raises ``XdrError``, which the
dispatcher turns into ``GARBAGE_ARGS``.
"""

from __future__ import annotations

import dataclasses
import struct as _struct
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeAlias, TypeVar

T = TypeVar("T")

_U32 = _struct.Struct(">I")
_I32 = _struct.Struct(">i")
_U64 = _struct.Struct(">Q")
_I64 = _struct.Struct(">q")

_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


class XdrError(ValueError):
    """The input is not a valid encoding of the expected type."""


class Encoder:
    """Accumulates XDR items; ``getvalue`` joins them once at the end."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []

    def u32(self, v: int) -> None:
        self.parts.append(_U32.pack(v))

    def i32(self, v: int) -> None:
        self.parts.append(_I32.pack(v))

    def u64(self, v: int) -> None:
        self.parts.append(_U64.pack(v))

    def i64(self, v: int) -> None:
        self.parts.append(_I64.pack(v))

    def fixed(self, data: bytes | memoryview, n: int) -> None:
        if len(data) != n:
            raise XdrError(f"fixed opaque needs {n} bytes, got {len(data)}")
        self.parts.append(data)
        self.parts.append(_PAD[n & 3])

    def opaque(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        self.parts.append(_U32.pack(n))
        self.parts.append(data if not isinstance(data, bytearray) else bytes(data))
        if n & 3:
            self.parts.append(_PAD[n & 3])

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

    def length(self) -> int:
        return sum(len(p) for p in self.parts)


class Decoder:
    """Reads XDR items from a buffer; every read is bounds-checked."""

    __slots__ = ("buf", "pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        self.pos = pos

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise XdrError(f"truncated input: need {n} bytes at {self.pos}, have {len(self.buf) - self.pos}")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def u32(self) -> int:
        v: int = _U32.unpack_from(self._take(4))[0]
        return v

    def i32(self) -> int:
        v: int = _I32.unpack_from(self._take(4))[0]
        return v

    def u64(self) -> int:
        v: int = _U64.unpack_from(self._take(8))[0]
        return v

    def i64(self) -> int:
        v: int = _I64.unpack_from(self._take(8))[0]
        return v

    def fixed(self, n: int) -> memoryview:
        view = self._take(n)
        if n & 3:
            self._take(4 - (n & 3))
        return view

    def opaque(self, limit: int | None = None) -> memoryview:
        n = self.u32()
        if limit is not None and n > limit:
            raise XdrError(f"opaque of {n} bytes exceeds its limit {limit}")
        return self.fixed(n)

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise XdrError(f"{len(self.buf) - self.pos} trailing bytes")


class Type(Generic[T]):
    """An XDR type: ``pack`` appends a value to an ``Encoder``, ``unpack`` reads one."""

    def pack(self, enc: Encoder, value: T) -> None:
        raise NotImplementedError

    def unpack(self, dec: Decoder) -> T:
        raise NotImplementedError

    def encode(self, value: T) -> bytes:
        enc = Encoder()
        self.pack(enc, value)
        return enc.getvalue()

    def decode(self, data: bytes | memoryview) -> T:
        dec = Decoder(data)
        value = self.unpack(dec)
        dec.done()
        return value


class _UInt(Type[int]):
    def pack(self, enc: Encoder, value: int) -> None:
        if not 0 <= value <= 0xFFFFFFFF:
            raise XdrError(f"unsigned int out of range: {value}")
        enc.u32(value)

    def unpack(self, dec: Decoder) -> int:
        return dec.u32()


class _Int(Type[int]):
    def pack(self, enc: Encoder, value: int) -> None:
        enc.i32(value)

    def unpack(self, dec: Decoder) -> int:
        return dec.i32()


class _UHyper(Type[int]):
    def pack(self, enc: Encoder, value: int) -> None:
        if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
            raise XdrError(f"unsigned hyper out of range: {value}")
        enc.u64(value)

    def unpack(self, dec: Decoder) -> int:
        return dec.u64()


class _Hyper(Type[int]):
    def pack(self, enc: Encoder, value: int) -> None:
        enc.i64(value)

    def unpack(self, dec: Decoder) -> int:
        return dec.i64()


class _Bool(Type[bool]):
    def pack(self, enc: Encoder, value: bool) -> None:
        enc.u32(1 if value else 0)

    def unpack(self, dec: Decoder) -> bool:
        v = dec.u32()
        if v > 1:
            raise XdrError(f"bad boolean {v}")
        return v == 1


class _Void(Type[None]):
    def pack(self, enc: Encoder, value: None) -> None:
        return None

    def unpack(self, dec: Decoder) -> None:
        return None


UInt: Type[int] = _UInt()
Int: Type[int] = _Int()
UHyper: Type[int] = _UHyper()
Hyper: Type[int] = _Hyper()
Bool: Type[bool] = _Bool()
Void: Type[None] = _Void()

# Field annotations for the scalar types (see ``field_type``).
U32: TypeAlias = Annotated[int, UInt]
I32: TypeAlias = Annotated[int, Int]
U64: TypeAlias = Annotated[int, UHyper]
I64: TypeAlias = Annotated[int, Hyper]


class Enum(Type[int]):
    """A 32-bit enum restricted to its declared values."""

    def __init__(self, values: Sequence[int]) -> None:
        self.values = frozenset(values)

    def pack(self, enc: Encoder, value: int) -> None:
        enc.i32(value)

    def unpack(self, dec: Decoder) -> int:
        v = dec.i32()
        if v not in self.values:
            raise XdrError(f"bad enum value {v}")
        return v


class FixedOpaque(Type[bytes]):
    def __init__(self, n: int) -> None:
        self.n = n

    def pack(self, enc: Encoder, value: bytes) -> None:
        enc.fixed(value, self.n)

    def unpack(self, dec: Decoder) -> bytes:
        return bytes(dec.fixed(self.n))


class Opaque(Type[bytes]):
    """Variable-length opaque; decodes to ``bytes`` (see ``Bulk`` for zero-copy)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit

    def pack(self, enc: Encoder, value: bytes) -> None:
        if self.limit is not None and len(value) > self.limit:
            raise XdrError(f"opaque of {len(value)} bytes exceeds {self.limit}")
        enc.opaque(value)

    def unpack(self, dec: Decoder) -> bytes:
        return bytes(dec.opaque(self.limit))


class Bulk(Type[memoryview]):
    """Variable-length opaque decoded as a ``memoryview`` into the record (no copy)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit

    def pack(self, enc: Encoder, value: memoryview) -> None:
        enc.opaque(value)

    def unpack(self, dec: Decoder) -> memoryview:
        return dec.opaque(self.limit)


class String(Type[bytes]):
    """XDR string. Kept as ``bytes``: NFS names are byte strings, not text."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit

    def pack(self, enc: Encoder, value: bytes) -> None:
        if self.limit is not None and len(value) > self.limit:
            raise XdrError(f"string of {len(value)} bytes exceeds {self.limit}")
        enc.opaque(value)

    def unpack(self, dec: Decoder) -> bytes:
        return bytes(dec.opaque(self.limit))


class Optional(Type["T | None"], Generic[T]):
    """``*T`` in XDR: a boolean followed by the value when present."""

    def __init__(self, inner: Type[T]) -> None:
        self.inner = inner

    def pack(self, enc: Encoder, value: T | None) -> None:
        if value is None:
            enc.u32(0)
        else:
            enc.u32(1)
            self.inner.pack(enc, value)

    def unpack(self, dec: Decoder) -> T | None:
        flag = dec.u32()
        if flag == 0:
            return None
        if flag != 1:
            raise XdrError(f"bad optional flag {flag}")
        return self.inner.unpack(dec)


class Array(Type[list[T]], Generic[T]):
    """Variable-length array ``T<limit>``."""

    def __init__(self, inner: Type[T], limit: int | None = None) -> None:
        self.inner = inner
        self.limit = limit

    def pack(self, enc: Encoder, value: list[T]) -> None:
        enc.u32(len(value))
        for item in value:
            self.inner.pack(enc, item)

    def unpack(self, dec: Decoder) -> list[T]:
        n = dec.u32()
        if self.limit is not None and n > self.limit:
            raise XdrError(f"array of {n} items exceeds {self.limit}")
        if n * 4 > dec.remaining():
            raise XdrError(f"array of {n} items cannot fit in {dec.remaining()} bytes")
        return [self.inner.unpack(dec) for _ in range(n)]


class LinkedList(Type[list[T]], Generic[T]):
    """An XDR linked list (``struct entry { ...; entry *next; }``) as a Python list."""

    def __init__(self, inner: Type[T]) -> None:
        self.inner = inner

    def pack(self, enc: Encoder, value: list[T]) -> None:
        for item in value:
            enc.u32(1)
            self.inner.pack(enc, item)
        enc.u32(0)

    def unpack(self, dec: Decoder) -> list[T]:
        out: list[T] = []
        while True:
            flag = dec.u32()
            if flag == 0:
                return out
            if flag != 1:
                raise XdrError(f"bad list flag {flag}")
            out.append(self.inner.unpack(dec))


class Struct(Type[T], Generic[T]):
    """An XDR struct mapped onto a dataclass: its fields, in declaration order, are the wire's.

    Each field's XDR type comes from the dataclass's own annotation (``field_type``), so a
    struct is declared once; ``struct(cls)`` gives the (cached) codec of a dataclass. An
    explicit ``fields`` list, checked against the dataclass, is still accepted.
    """

    def __init__(self, cls: Callable[..., T], fields: Sequence[tuple[str, Type[Any]]] | None = None) -> None:
        self.cls = cls
        if fields is None:
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                raise TypeError(f"{cls!r}: only a dataclass has fields to derive")
            hints = typing.get_type_hints(cls, include_extras=True)
            fields = [(f.name, field_type(hints[f.name], f"{cls.__name__}.{f.name}")) for f in dataclasses.fields(cls)]
        self.fields = list(fields)
        if dataclasses.is_dataclass(cls):
            names = [f.name for f in dataclasses.fields(cls)]
            if names != [n for n, _ in self.fields]:
                raise TypeError(f"{cls!r}: XDR fields {[n for n, _ in self.fields]} != {names}")

    def pack(self, enc: Encoder, value: T) -> None:
        for name, typ in self.fields:
            typ.pack(enc, getattr(value, name))

    def unpack(self, dec: Decoder) -> T:
        return self.cls(*[typ.unpack(dec) for _, typ in self.fields])


_STRUCTS: dict[type, Struct[Any]] = {}


def struct(cls: type[T]) -> Struct[T]:
    """The codec of dataclass ``cls``, derived from its annotations once and cached."""
    codec = _STRUCTS.get(cls)
    if codec is None:
        codec = _STRUCTS[cls] = Struct(cls)
    return codec


def field_type(hint: Any, where: str = "field") -> Type[Any]:
    """The XDR type of a dataclass field annotation.

    ``Annotated[T, codec]`` (e.g. ``U32`` below, or a program's ``Fh``) → that codec; a
    dataclass → its ``struct``; ``bool`` → ``Bool``; ``X | None`` → ``Optional`` of X's type
    (XDR ``*X``). Anything else (a bare ``int``: 32 or 64 bits, signed or not?) is refused
    when the struct is declared, not when it is first sent.
    """
    if typing.get_origin(hint) is Annotated:
        for meta in reversed(hint.__metadata__):
            if isinstance(meta, Type):
                return meta
        raise TypeError(f"{where}: Annotated without an XDR type: {hint!r}")
    if hint is bool:
        return Bool
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return struct(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arms = typing.get_args(hint)
        if len(arms) == 2 and type(None) in arms:
            (inner,) = [a for a in arms if a is not type(None)]
            return Optional(field_type(inner, where))
    raise TypeError(f"{where}: no XDR type for {hint!r}; write Annotated[{hint!r}, xdr.<type>]")


class Union(Type[tuple[int, Any]]):
    """A discriminated union; values are ``(discriminant, arm_value)`` tuples.

    ``arms`` maps discriminant values to arm types; ``default`` is used for any other value
    (``None`` means other values are invalid).
    """

    def __init__(self, arms: dict[int, Type[Any]], default: Type[Any] | None = None) -> None:
        self.arms = arms
        self.default = default

    def _arm(self, disc: int) -> Type[Any]:
        arm = self.arms.get(disc, self.default)
        if arm is None:
            raise XdrError(f"bad union discriminant {disc}")
        return arm

    def pack(self, enc: Encoder, value: tuple[int, Any]) -> None:
        disc, body = value
        arm = self._arm(disc)
        enc.i32(disc)
        arm.pack(enc, body)

    def unpack(self, dec: Decoder) -> tuple[int, Any]:
        disc = dec.i32()
        return disc, self._arm(disc).unpack(dec)
