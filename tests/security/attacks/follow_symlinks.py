# Attack: follow symbolic links the tenant planted in its folder — absolute ones to host files
# (/etc/passwd, a host secret), relative ones climbing out of the folder — and import a module
# that is a link to a host file.
from escape import os, outcome


def attack(names):
    def read(name):
        fd = os.open(os.path.join(os.path.dirname(__file__), name), os.O_RDONLY)
        try:
            return os.read(fd, 4096).decode(errors="replace")
        finally:
            os.close(fd)
    return {name: outcome(lambda: read(name)) for name in names}


def import_linked():
    import linked_module  # a link to a host file outside the folder
    return linked_module.SECRET
