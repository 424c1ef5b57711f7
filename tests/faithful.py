"""``same(a, b)``: the comparison the value tests share (codec unit tests and end-to-end)."""
import datetime as dt
import decimal
import math


def same(a, b) -> bool:
    """True when b is a faithful copy of a: same type at every level, same value, and the
    distinctions == ignores (-0.0 vs 0.0, nan, Decimal exponents, True vs 1 in a set)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is complex:
        return same(a.real, b.real) and same(a.imag, b.imag)
    if type(a) is decimal.Decimal:
        return a.as_tuple() == b.as_tuple()
    if type(a) in (dt.datetime, dt.time):
        return a == b and a.isoformat() == b.isoformat()
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) in (set, frozenset):
        twins = {y: y for y in b}  # finds b's element equal to x (1 == 1.0 == True)
        return len(a) == len(b) and all(x in twins and same(x, twins[x]) for x in a)
    if type(a) is dict:
        twins = {k: k for k in b}
        return len(a) == len(b) and all(
            key in twins and same(key, twins[key]) and same(value, b[key]) for key, value in a.items())
    return a == b
