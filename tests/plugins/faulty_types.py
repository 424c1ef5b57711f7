"""An operator [types] plugin whose code fails as its value asks: exits, raises an exception
whose __str__ fails, or spins (tests/integration/test_types_plugin_faults.py and the Node
client's test/inputs.test.js)."""


class Exits:
    def __init__(self, mode):
        self.mode = mode


class Unsayable(Exception):
    def __str__(self):
        raise RuntimeError("no words")


def fail(mode):
    if mode == "exit":
        raise SystemExit("the type left")
    if mode == "unsayable":
        raise Unsayable()
    if mode == "spin":
        while True:
            pass


class exits:
    type = Exits

    @staticmethod
    def encode(obj):
        fail(obj.mode)
        return obj.mode

    @staticmethod
    def decode(payload):
        fail(payload)
        return Exits(payload)
