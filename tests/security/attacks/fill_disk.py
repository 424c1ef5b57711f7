# Attack: fill the disk through /tmp — large files, one file past the file size limit, and
# millions of empty files (which cost inodes, not bytes).
from escape import os, real_import


def _errno_name(e):
    return real_import("errno").errorcode.get(e.errno, str(e.errno))


def fill(chunk_bytes):
    written, files = 0, 0
    chunk = b"x" * chunk_bytes
    while written < 1 << 34:
        fd = os.open(f"/tmp/fill{files}", os.O_WRONLY | os.O_CREAT, 0o600)
        files += 1
        try:
            for _ in range(16):
                written += os.write(fd, chunk)
        except OSError as e:
            if e.errno != real_import("errno").EFBIG:
                return {"written": written, "stopped_by": _errno_name(e)}
        finally:
            os.close(fd)
    return {"written": written, "stopped_by": None}


def huge_file(size):
    fd = os.open("/tmp/huge", os.O_WRONLY | os.O_CREAT, 0o600)
    written = 0
    try:
        while written < size:
            written += os.write(fd, b"y" * 65536)
    except OSError as e:
        return {"written": written, "stopped_by": _errno_name(e)}
    finally:
        os.close(fd)
    return {"written": written, "stopped_by": None}


def inodes():
    made = 0
    try:
        while made < 10_000_000:
            os.close(os.open(f"/tmp/i{made}", os.O_WRONLY | os.O_CREAT, 0o600))
            made += 1
    except OSError as e:
        return {"made": made, "stopped_by": _errno_name(e)}
    return {"made": made, "stopped_by": None}
