"""What a guest's import statements reach, end to end, where a probe found the importer unlike
Python: a call's file named by its stem, relative imports from the top, source holding a null
byte."""
from __future__ import annotations

import os

import pytest

from isorun import errors

FMT = "import json\ndef show(x):\n    return json.dumps(x)\n"


@pytest.mark.parametrize("file", ["my-rules/helpers.py", "jobs-2024/json.py"])
def test_a_call_file_in_a_folder_that_is_no_name_leaves_the_names_it_shadows_to_the_import(runner, file):
    """The call's file, a top-level module named by its stem, was what every ``import helpers``
    (``import json``) of the call got: root's helpers.py, or the standard library's json, could
    not be reached ("module 'json' has no attribute 'dumps'")."""
    stem = os.path.splitext(os.path.basename(file))[0]
    r = runner({file: f"import fmt, {stem}\ndef f():\n    return [__name__, fmt.show([1]), {stem}.__name__, "
                      f"getattr({stem}, 'WHERE', 'stdlib')]\n",
                "fmt.py": FMT, "helpers.py": "WHERE = 'root'\n"}, file=file)
    for _ in range(2):  # the second from the daemon's code cache
        assert r.run("f") == [stem, "[1]", stem, "root" if stem == "helpers" else "stdlib"]


def test_a_call_file_named_by_its_stem_is_still_what_its_name_imports_when_nothing_else_has_it(runner):
    r = runner({"my-rules/rules.py": "import dataclasses\n@dataclasses.dataclass\nclass P:\n    x: 'int'\n"
                                     "def f():\n    import rules\n"
                                     "    return [rules.P is P, list(dataclasses.astuple(P(1)))]\n"},
               file="my-rules/rules.py")
    assert r.run("f") == [True, [1]]


@pytest.mark.parametrize("file", ["index.py", "my-rules/index.py"])
def test_a_relative_import_in_a_top_level_call_file_says_what_python_says(runner, file):
    r = runner({file: "def f():\n    from . import helper\n", "helper.py": "", "my-rules/helper.py": ""}, file=file)
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert info.value.type_name == "ImportError"
    assert str(info.value).endswith("attempted relative import with no known parent package")


def test_a_null_byte_in_a_guest_module_is_a_syntax_error_naming_the_file(runner):
    """Python's compiler said "source code string cannot contain null bytes", naming no file."""
    r = runner({"index.py": "import helper\ndef f():\n    return 1\n"})
    with open(os.path.join(r.root, "helper.py"), "wb") as f:
        f.write(b"X = 1\nY = 'a\0b'\n")
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert info.value.type_name == "SyntaxError"
    assert str(info.value).endswith("/helper.py is not valid source text: a null byte at column 7 (helper.py, line 2)")
    assert 'File "/helper.py", line 2' in info.value.traceback
