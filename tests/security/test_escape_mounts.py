"""The mounts of a call's root that docs/security.md promises beyond "no host path can be
named": the private /tmp runs no code (noexec), and the host's installed packages, which lie
inside the bound stdlib and /usr/lib, are covered by an empty tmpfs."""
import glob
import os
import sys
import sysconfig


def test_tmp_is_noexec_and_a_file_written_there_cannot_be_mapped_executable(attack):
    results = attack("tmp_exec")
    assert "noexec" in results["tmp options"], results
    assert results["mmap exec"] in ("EPERM", "EACCES"), results
    assert results["mmap read"] == "ok: None", results  # the file is there; only running it is refused


def host_package_folders() -> list[str]:
    """The base interpreter's site-packages and the system's dist-packages that exist on the
    host and hold something (a covered empty folder would prove nothing)."""
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    found = {base["purelib"], base["platlib"], *glob.glob("/usr/lib/python3*/*-packages")}
    return sorted(path for path in found if os.path.isdir(path) and os.listdir(path))


def test_the_hosts_installed_packages_are_hidden(attack):
    folders = host_package_folders()
    assert folders, "no folder of installed packages on this host: nothing to check"
    listings = attack("site_packages", args=[folders])
    shown = {path: listing for path, listing in listings.items() if listing not in ("ok: []", "ENOENT")}
    assert shown == {}, shown
