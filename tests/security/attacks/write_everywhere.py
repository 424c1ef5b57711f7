# Attack: write where a guest must not — its own folder (to plant code for the next call), the
# root of its view, the shared libraries, a whitelisted folder and a host path under /tmp.
from escape import os, outcome


def attack(paths):
    def plant(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            return os.write(fd, b"planted by a guest\n")
        finally:
            os.close(fd)
    results = {path: outcome(lambda: plant(path)) for path in paths}
    results["mkdir /guest/x"] = outcome(lambda: os.mkdir("/guest/x"))
    results["rename guest file"] = outcome(lambda: os.rename("/guest/escape.py", "/guest/renamed.py"))
    results["delete guest file"] = outcome(lambda: os.unlink("/guest/escape.py"))
    results["chmod /tmp"] = outcome(lambda: os.chmod("/tmp", 0o700))
    return results

