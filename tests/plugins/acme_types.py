"""Operator types for the tests of both clients (tests/integration/test_values.py and
clients/node/test/types.test.js): a daemon loads this module from its plugin_paths."""

from decimal import Decimal


class Money:
    def __init__(self, amount, currency):
        self.amount, self.currency = amount, currency

    def doubled(self):
        return Money(self.amount * 2, self.currency)


class money:
    type = Money
    encode = staticmethod(lambda m: [str(m.amount), m.currency])
    decode = staticmethod(lambda p: Money(Decimal(p[0]), p[1]))


class Coupon:
    def __init__(self, code):
        self.code = code


class coupon:
    type = Coupon

    @staticmethod
    def encode(c):
        return {"code": c.code}

    @staticmethod
    def decode(p):
        return Coupon(p["code"])


class NotAResolver:
    type = Money
