# SPDX-License-Identifier: LGPL-2.1-or-later
"""`record` and `Enumeration`: dataclass and enum semantics without their import and
class-creation cost.

The boot path runs this program on every boot, and the no-op refresh must cost less than
upstream's C tool. `dataclasses` builds every method with exec() and pulls in `inspect`: about
25 ms for this package's thirty classes, more than the rest of a no-op refresh. The type checker
sees the real `dataclasses.dataclass` (so fields, defaults and frozenness are checked as usual);
at run time `record` builds the same methods from closures.

Supported by `record`: keyword `frozen`, field defaults, `field(default=..., default_factory=...)`,
fields inherited from a record base class, `__post_init__`, `replace()`, equality, hashing of
frozen records and a dataclass-style repr.

`Enumeration` is `enum.Enum` to the type checker; at run time it is a small class that behaves
the same for what the package uses (members with plain values, no mixed-in type): `enum`, with
the functools and collections it imports, and the building of the enum classes cost a merge
about 4 ms.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field, replace
    from typing import Any
else:
    # Annotations below are never evaluated (postponed) and never checked (this branch is the
    # run-time stand-in for what the type checker sees above).
    _MISSING = object()

    class FrozenInstanceError(AttributeError):
        """Raised when a frozen record is assigned to, like dataclasses.FrozenInstanceError."""

    class _Field:
        __slots__ = ("default", "default_factory")

        def __init__(self, default: Any, default_factory: Any) -> None:
            self.default = default
            self.default_factory = default_factory

    def field(*, default=_MISSING, default_factory=_MISSING):  # noqa: ANN001, ANN201
        return _Field(default, default_factory)

    def _make(cls: type, frozen: bool) -> type:
        inherited: dict[str, Any] = {}
        for base in reversed(cls.__mro__[1:]):
            inherited.update(getattr(base, "__record_defaults__", {}))
        own = cls.__dict__.get("__annotations__", {})
        defaults: dict[str, Any] = dict(inherited)
        for name in own:
            value = cls.__dict__.get(name, _MISSING)
            if isinstance(value, _Field):
                if value.default is not _MISSING:
                    setattr(cls, name, value.default)
                else:
                    delattr(cls, name)
            defaults[name] = value
        names = tuple(defaults)
        cls.__record_defaults__ = defaults
        cls.__record_fields__ = names

        # The defaults sorted once, so that building a record does the least per field.
        plain: dict[str, Any] = {}  # name -> default value
        factories: dict[str, Any] = {}  # name -> default_factory
        required: list[str] = []
        for name, default in defaults.items():
            if isinstance(default, _Field):
                if default.default_factory is not _MISSING:
                    factories[name] = default.default_factory
                elif default.default is not _MISSING:
                    plain[name] = default.default
                else:
                    required.append(name)
            elif default is _MISSING:
                required.append(name)
            else:
                plain[name] = default
        position = {name: i for i, name in enumerate(names)}
        count = len(names)

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            given = len(args)
            if given > count:
                raise TypeError(f"{cls.__name__}() takes {count} arguments, got {given}")
            values = dict(plain)
            if given:
                values.update(zip(names, args))
            for key in kwargs:
                at = position.get(key)
                if at is None:
                    raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {key!r}")
                if at < given:
                    raise TypeError(f"{cls.__name__}() got multiple values for argument {key!r}")
            values.update(kwargs)
            if len(values) < count:
                for name, factory in factories.items():
                    if name not in values:
                        values[name] = factory()
                for name in required:
                    if name not in values:
                        raise TypeError(f"{cls.__name__}() missing required argument {name!r}")
            # Straight into the instance's dict: a frozen record's __setattr__ refuses, as it should
            # for everyone else.
            self.__dict__.update(values)
            post = getattr(self, "__post_init__", None)
            if post is not None:
                post()

        def __repr__(self: Any) -> str:
            inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
            return f"{cls.__qualname__}({inner})"

        def __eq__(self: Any, other: Any) -> Any:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return all(getattr(self, n) == getattr(other, n) for n in names)

        cls.__init__ = __init__
        cls.__repr__ = __repr__
        cls.__eq__ = __eq__
        if frozen:

            def __setattr__(self: Any, name: str, value: Any) -> None:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")

            def __delattr__(self: Any, name: str) -> None:
                raise FrozenInstanceError(f"cannot delete field {name!r}")

            def __hash__(self: Any) -> int:
                return hash(tuple(getattr(self, n) for n in names))

            cls.__setattr__ = __setattr__
            cls.__delattr__ = __delattr__
            cls.__hash__ = __hash__
        else:
            cls.__hash__ = None
        return cls

    def record(cls: Any = None, *, frozen: bool = False) -> Any:
        if cls is None:
            return lambda c: _make(c, frozen)
        return _make(cls, frozen)

    def replace(obj, **changes):  # noqa: ANN001, ANN201 - typed by dataclasses.replace above
        values = {n: getattr(obj, n) for n in obj.__record_fields__}
        values.update(changes)
        return obj.__class__(**values)


# --------------------------------------------------------------------------------------------------
# Enumerations


if TYPE_CHECKING:
    from enum import Enum as Enumeration
else:

    class _EnumerationType(type):
        """Turns the plain values of a class body into its members, like enum.EnumType does for
        the part of enum.Enum this package uses: members by value (Cls(value)), by name
        (Cls[name]), iteration in definition order, len(), identity comparison, `name`, `value`
        and enum's repr and str."""

        def __new__(mcs, name, bases, namespace):  # noqa: ANN001, ANN204, N804
            values = {
                key: value
                for key, value in namespace.items()
                if not key.startswith("_")
                and not callable(value)
                and not isinstance(value, (property, classmethod, staticmethod))
            }
            for key in values:
                del namespace[key]
            cls = super().__new__(mcs, name, bases, namespace)
            members = {}  # by name, aliases too
            by_value = {}
            for key, value in values.items():
                member = by_value.get(value)
                if member is None:  # a value named twice: the second name is an alias
                    member = object.__new__(cls)
                    object.__setattr__(member, "_name_", key)
                    object.__setattr__(member, "_value_", value)
                    by_value[value] = member
                type.__setattr__(cls, key, member)
                members[key] = member
            type.__setattr__(cls, "_members_", members)
            type.__setattr__(cls, "_by_value_", by_value)
            type.__setattr__(cls, "_ordered_", tuple(by_value.values()))
            return cls

        def __call__(cls, value):  # noqa: ANN001, ANN204, N805
            if isinstance(value, cls):
                return value
            try:
                return cls._by_value_[value]
            except (KeyError, TypeError):
                raise ValueError(f"{value!r} is not a valid {cls.__qualname__}") from None

        def __getitem__(cls, name):  # noqa: ANN001, ANN204, N805
            return cls._members_[name]

        def __iter__(cls):  # noqa: ANN204, N805
            return iter(cls._ordered_)

        def __len__(cls):  # noqa: ANN204, N805
            return len(cls._ordered_)

        def __contains__(cls, member):  # noqa: ANN001, ANN204, N805
            return isinstance(member, cls)

        def __setattr__(cls, name, value):  # noqa: ANN001, ANN204, N805
            if name in cls.__dict__.get("_members_", {}):
                raise AttributeError(f"cannot reassign member {name!r}")
            super().__setattr__(name, value)

        def __repr__(cls):  # noqa: ANN204, N805
            return f"<enum {cls.__name__!r}>"

    class Enumeration(metaclass=_EnumerationType):
        """enum.Enum, for members with plain values and no mixed-in type."""

        __slots__ = ("_name_", "_value_")

        @property
        def name(self):  # noqa: ANN201
            return self._name_

        @property
        def value(self):  # noqa: ANN201
            return self._value_

        def __setattr__(self, name, value):  # noqa: ANN001, ANN204
            raise AttributeError(f"cannot set {name!r} on {self!r}")

        def __repr__(self):  # noqa: ANN204
            return f"<{type(self).__name__}.{self._name_}: {self._value_!r}>"

        def __str__(self):  # noqa: ANN204
            return f"{type(self).__name__}.{self._name_}"

        def __format__(self, spec):  # noqa: ANN001, ANN204
            return format(str(self), spec)

        def __hash__(self):  # noqa: ANN204
            return hash(self._name_)

        def __reduce_ex__(self, protocol):  # noqa: ANN001, ANN204
            return type(self), (self._value_,)

        def __copy__(self):  # noqa: ANN204
            return self

        def __deepcopy__(self, memo):  # noqa: ANN001, ANN204
            return self


__all__ = ["Enumeration", "record", "field", "replace"]
