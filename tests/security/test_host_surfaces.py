"""What a sandbox holds, or any process may ask the kernel for, that reached the host: the
channel's network namespace, kernel memory no limit counts, the host disk's names and extents.
Each attack assumes the guest has escaped to `os` (attacks/escape.py)."""
import secrets
import socket


def test_the_channel_sees_the_calls_own_network_not_the_hosts(attack):
    """The zygote makes the channel in the host's network namespace: through it a guest's
    interface ioctls named the host's devices (and asked their driver), and a bind() took a
    name in the host's abstract socket namespace, which the host and other calls saw."""
    host = [index for index, _name in socket.if_nameindex() if index != 1]  # (1: loopback)
    name = f"isorun-probe-{secrets.token_hex(6)}"
    result = attack("host_surfaces", args=[host, name])
    assert all(seen == "ENODEV" for seen in result["interfaces"].values()), result["interfaces"]
    with open("/proc/net/unix") as table:
        assert "@" + name not in table.read()


def test_kernel_memory_no_limit_counts_is_refused(attack):
    """PR_FUTEX_HASH: 1 GiB of vmalloc per process, in no one's RSS (4 processes of one call
    took 4 GB of the host's); TCP MD5 keys: unreclaimable slab, up to optmem_max a socket."""
    result = attack("host_surfaces", args=[[], "unused"])
    assert result["futex_hash"] == "EPERM" and result["md5"] == "EPERM", result


def test_the_host_disks_extents_uuid_and_device_are_not_given(attack):
    """EXT4_IOC_GET_ES_CACHE gave what FS_IOC_FIEMAP, denied, had (a file's physical extents);
    the filesystem's UUID and sysfs name ("ext4/vda") name the host's disk."""
    ioctls = attack("host_surfaces", args=[[], "unused"])["ioctls"]
    assert ioctls == {"es_cache": "EPERM", "fsuuid": "EPERM", "sysfs_path": "EPERM"}, ioctls
