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
