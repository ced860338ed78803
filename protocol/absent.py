"""Optional fields that a peer may send as ``null``, meaning "absent": ``NullMeansAbsent``.

Clients in Java (Jackson), C# (System.Text.Json), Go (pointer fields without
``omitempty``), Kotlin and Swift write an unset optional field as ``null`` by default.
docs/protocol.md ("Frames: general rules") makes ``null`` the same as leaving an
optional field out, so that they work unchanged.

A field typed ``NullMeansAbsent[X]`` with a default is read by msgspec as ``X | None``
(so ``null``, and MessagePack nil, decode), while the type checker sees ``X``: the
Struct's ``__post_init__``, which msgspec runs after every decode (and construction),
puts the field's default in place of ``None``. So every instance holds an ``X``, and
what is stored and sent out is exactly what the peer would have got by leaving the
field out. Fields whose default is ``None`` are plainly ``X | None`` and need none of
this; nor do free-form (``Any``) fields, where ``null`` is a value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeVar

if TYPE_CHECKING:
    _Field = TypeVar("_Field")
    NullMeansAbsent = Annotated[_Field, "null means absent: __post_init__ fills the default"]
else:

    class NullMeansAbsent:
        """``NullMeansAbsent[X]`` is ``X | None`` to msgspec (see the module's docstring)."""

        def __class_getitem__(cls, field_type: Any) -> Any:
            return field_type | None
