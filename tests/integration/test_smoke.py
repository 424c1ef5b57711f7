"""The shortest path through everything: a real daemon, a real sandbox, a value back."""


def test_a_call_returns_its_value(runner):
    r = runner({"index.py": "def add(a, b):\n    return a + b\n"})
    assert r.run("add", args=[2, 3]) == 5
