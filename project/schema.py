"""The typed fields a params schema is made of: a type check plus a range or a choice, each error
naming the file, the key and what is allowed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping


class ParamsError(ValueError):
    """A parameter file or override is invalid; the message names the file, the key and the rule."""


@dataclass(frozen=True)
class Field:
    """One parameter: a type check plus an optional range or choice rule."""

    kind: str  # int | float | bool | str | optional_str | choice | int_list | float_list | str_list | mapping
    #           | str_list_or_mapping
    allowed: str = ""
    choices: tuple = ()
    check: Callable[[Any], bool] | None = None

    def validate(self, where: str, value: Any) -> Any:
        ok, value = _coerce(self.kind, value, self.choices)
        if not ok:
            raise ParamsError(f"{where}={value!r}: expected {self.describe()}")
        if self.check is not None and not self.check(value):
            raise ParamsError(f"{where}={value!r} is out of range; allowed {self.allowed}")
        return value

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        text = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a non-empty string",
            "optional_str": "a string or null",
            "int_list": "a non-empty list of integers",
            "float_list": "a non-empty list of numbers",
            "str_list": "a non-empty list of strings",
            "mapping": "a mapping (possibly empty, {})",
            "str_list_or_mapping": "a non-empty list of strings or a mapping",
        }[self.kind]
        return f"{text} in {self.allowed}" if self.allowed else text


def _coerce(kind: str, value: Any, choices: tuple) -> tuple[bool, Any]:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return math.isfinite(value), float(value)
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "str":
        return isinstance(value, str) and value != "", value
    if kind == "optional_str":
        return value is None or (isinstance(value, str) and value != ""), value
    if kind == "choice":
        return value in choices, value
    if kind == "mapping":
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if kind == "str_list":
        ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)
        return ok, value
    if kind == "str_list_or_mapping":
        return _coerce("mapping", value, ()) if isinstance(value, Mapping) else _coerce("str_list", value, ())
    if kind in ("int_list", "float_list"):
        item = "int" if kind == "int_list" else "float"
        if not isinstance(value, list) or not value:
            return False, value
        coerced = [_coerce(item, v, ()) for v in value]
        return all(ok for ok, _ in coerced), [v for _, v in coerced]
    raise AssertionError(kind)


def Int(lo: int | None = None, hi: int | None = None) -> Field:
    return Field("int", _range_text(lo, hi, "]"), check=_in_range(lo, hi, closed_hi=True))


def Float(lo: float | None = None, hi: float | None = None, *, closed_hi: bool = True) -> Field:
    bracket = "]" if closed_hi else ")"
    return Field("float", _range_text(lo, hi, bracket), check=_in_range(lo, hi, closed_hi=closed_hi))


def Positive() -> Field:
    return Field("float", "(0, inf)", check=lambda v: v > 0)


def Choice(*options: Any) -> Field:
    return Field("choice", choices=options)


def IntList(lo: int = 1) -> Field:
    return Field("int_list", f"[{lo}, inf) each", check=lambda v: all(x >= lo for x in v))


def _range_text(lo, hi, bracket: str) -> str:
    lo_text = "-inf" if lo is None else lo
    hi_text = "inf" if hi is None else hi
    return f"[{lo_text}, {hi_text}{bracket if hi is not None else ')'}"


def _in_range(lo, hi, *, closed_hi: bool) -> Callable[[Any], bool]:
    def check(v) -> bool:
        if lo is not None and v < lo:
            return False
        if hi is not None and (v > hi if closed_hi else v >= hi):
            return False
        return True

    return check


STR = Field("str")
OPTIONAL_STR = Field("optional_str")
BOOL = Field("bool")
