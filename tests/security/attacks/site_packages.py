# Attack: import a package the host installed that the call was not given — list the host
# interpreter's site-packages and the system's dist-packages, which lie inside the bound stdlib
# and /usr/lib.
from escape import os, outcome


def attack(paths):
    """{path: its listing (sorted, at most 5 names) or the errno name}."""
    return {path: outcome(lambda: sorted(os.listdir(path))[:5]) for path in paths}
