# SPDX-License-Identifier: LGPL-2.1-or-later
"""records.Enumeration against enum.Enum: the same class body, built both ways, behaves the same
for everything the package does with its enums."""

from __future__ import annotations

import copy
import enum
import pickle
from typing import Any

import pytest

from sysextpy import model
from sysextpy.records import Enumeration

BODY_VALUES = {"SYSEXT": "sysext", "CONFEXT": "confext", "ALIAS": "sysext", "NUMBER": 3}


def _body(ns: dict[str, Any]) -> None:
    ns.update(BODY_VALUES)
    ns["twice"] = property(lambda self: f"{self.value}{self.value}")
    ns["named"] = lambda self, suffix: self.name + suffix
    ns["_private"] = "not a member"


def build(base: type) -> Any:
    ns: dict[str, Any] = {}
    _body(ns)
    return type(base)("Sample", (base,), ns)


LIGHT = build(Enumeration)
REAL = enum.Enum("Sample", BODY_VALUES)  # the functional API: members in the same order
for key in ("twice", "named", "_private"):
    ns: dict[str, Any] = {}
    _body(ns)
    setattr(REAL, key, ns[key])


def observe(cls: Any) -> list[Any]:
    """What the package and its tests look at: members, lookups, names, values, texts."""
    members = list(cls)
    seen: list[Any] = [
        [(m.name, m.value) for m in members],
        len(cls),
        [repr(m) for m in members],
        [str(m) for m in members],
        [f"{m}" for m in members],
        [m.twice for m in members],
        [m.named("!") for m in members],
        cls("sysext") is cls.SYSEXT,
        cls.ALIAS is cls.SYSEXT,  # a second name for a value is an alias, not a member
        cls(3) is cls.NUMBER,
        cls["CONFEXT"] is cls.CONFEXT,
        cls(cls.CONFEXT) is cls.CONFEXT,
        cls.SYSEXT in cls,
        cls.SYSEXT == cls.SYSEXT,
        cls.SYSEXT != cls.CONFEXT,
        cls.SYSEXT == "sysext",
        {cls.SYSEXT: 1}[cls("sysext")],
        hash(cls.SYSEXT) == hash(cls("sysext")),
        bool(cls.SYSEXT),
        copy.copy(cls.SYSEXT) is cls.SYSEXT,
        copy.deepcopy((cls.CONFEXT,))[0] is cls.CONFEXT,
        isinstance(cls.SYSEXT, cls),
        "_private" in [m.name for m in members],
    ]
    for bad in ("nope", None, ["unhashable"]):
        with pytest.raises(ValueError):
            cls(bad)
    with pytest.raises(KeyError):
        cls["nope"]
    with pytest.raises(AttributeError):
        cls.SYSEXT = "other"
    return seen


def test_enumeration_behaves_as_enum() -> None:
    assert observe(LIGHT) == observe(REAL)


def test_members_survive_pickling() -> None:
    # Pickling finds the class by its module and name: one the package defines.
    for member in model.ImageClass:
        assert pickle.loads(pickle.dumps(member)) is member


@pytest.mark.parametrize(
    "cls", [model.ImageClass, model.MutableMode, model.ImageType, model.Verdict, model.JsonMode, model.Verb]
)
def test_the_vocabulary_is_the_enum_it_declares(cls: Any) -> None:
    """Each enum of the model, rebuilt with enum.Enum from its own members, has the same members
    in the same order and the same lookups."""
    real = enum.Enum(cls.__name__, [(m.name, m.value) for m in cls])
    assert [(m.name, m.value) for m in cls] == [(m.name, m.value) for m in real]
    for m in cls:
        assert cls(m.value) is m and cls[m.name] is m
        assert repr(m) == repr(real[m.name]) and str(m) == str(real[m.name])


# --------------------------------------------------------------------------------------------------
# record against dataclasses.dataclass


def _fields(ns: dict[str, Any], field_fn: Any) -> None:
    ns["__annotations__"] = {"a": "int", "b": "str", "c": "list[int]", "d": "int"}
    ns["b"] = "b"
    ns["c"] = field_fn(default_factory=list)
    ns["d"] = field_fn(default=4)


def _classes() -> tuple[Any, Any]:
    import dataclasses

    from sysextpy import records

    made = []
    for decorate, field_fn in (
        (dataclasses.dataclass(frozen=True), dataclasses.field),
        (records.record(frozen=True), records.field),
    ):
        ns: dict[str, Any] = {}
        _fields(ns, field_fn)
        made.append(decorate(type("Point", (), ns)))
    return made[0], made[1]


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {}),
    ((1, "x"), {}),
    ((1, "x", [2], 5), {}),
    ((), {"a": 1}),
    ((1,), {"d": 7, "b": "y"}),
    ((), {}),  # a is missing
    ((1, "x", [], 5, 6), {}),  # too many
    ((1,), {"a": 2}),  # twice
    ((1,), {"e": 2}),  # unknown
]


@pytest.mark.parametrize("args, kwargs", CALLS)
def test_record_builds_as_dataclass_does(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    real, light = _classes()

    def build(cls: Any) -> Any:
        try:
            made = cls(*args, **kwargs)
        except TypeError:
            return TypeError
        return (made.a, made.b, made.c, made.d, made == cls(*args, **kwargs), repr(made))

    assert build(light) == build(real)
    if build(real) is not TypeError:
        made = light(*args, **kwargs)
        if len(args) < 3:  # c from its factory: a fresh list for each record
            assert made.c is not light(*args, **kwargs).c
        with pytest.raises(AttributeError):
            made.a = 9
