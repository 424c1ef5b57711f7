# Attack: take the host's reserved huge pages — map MAP_HUGETLB memory, which comes from the
# pool the host set aside (vm.nr_hugepages) for its own services, not from the call's memory.
from escape import outcome, real_import

MAP_HUGETLB = 0x40000
HUGE_PAGE = 2 << 20


def attack(pages):
    """Maps ``pages`` huge pages and touches each, so that they are taken from the pool."""
    mmap = real_import("mmap")

    def take():
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB
        area = mmap.mmap(-1, pages * HUGE_PAGE, flags=flags)
        for offset in range(0, pages * HUGE_PAGE, HUGE_PAGE):
            area[offset] = 1
        return len(area) // HUGE_PAGE
    return outcome(take)
