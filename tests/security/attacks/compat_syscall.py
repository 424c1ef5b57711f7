# Attack: dodge a filter written for x86_64 numbers by making the call through the 32-bit
# compat entry (int 0x80, where i386 numbers differ): machine code in an executable page,
# called through ctypes; or through the x32 ABI (x86_64 numbers with bit 30 set). The kernel
# must kill the process rather than run the call.
from escape import real_import, syscall

I386_GETPID = 20
X32_SYSCALL_BIT, FLOCK, LOCK_EX = 0x40000000, 73, 2


def attack():
    ctypes, mmap = real_import("ctypes"), real_import("mmap")
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    # mov eax, I386_GETPID ; int 0x80 ; ret
    page.write(bytes([0xB8, I386_GETPID, 0, 0, 0, 0xCD, 0x80, 0xC3]))
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return ctypes.CFUNCTYPE(ctypes.c_long)(address)()


def x32():
    """flock, denied by number, asked for by its x32 number."""
    return syscall(X32_SYSCALL_BIT | FLOCK, 0, LOCK_EX)
