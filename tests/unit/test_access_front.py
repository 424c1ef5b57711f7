"""The allowlist front's memory of closed relays (isorund/access.py), on a real event loop."""
import asyncio

from isorund import access
from isorund.access import AccessFront, Allowlist, Peer

ALICE = Peer(pid=10, uid=1000, gid=1000, groups=())
MALLORY = Peer(pid=11, uid=1001, gid=1001, groups=())


def front() -> AccessFront:
    return AccessFront("/nonexistent/public", "/nonexistent/private", Allowlist(frozenset({1000}), frozenset()))


def test_a_closed_relays_peer_is_known_for_a_while_then_forgotten(monkeypatch):
    monkeypatch.setattr(access, "CLOSED_RELAY_SECONDS", 0.05)

    async def scenario():
        f = front()
        f.peers["unix-abstract:a"] = ALICE
        f.forget_later("unix-abstract:a")
        await asyncio.sleep(0.01)
        still_known = f.peers.get("unix-abstract:a")
        await asyncio.sleep(0.1)
        return still_known, f.peers.get("unix-abstract:a")

    assert asyncio.run(scenario()) == (ALICE, None)


def test_a_name_the_kernel_gave_to_a_new_relay_keeps_the_new_peer(monkeypatch):
    """Abstract autobind names can be reused once a socket is closed: forgetting the old relay
    must not drop the new one's credentials (its calls would then be judged as unknown)."""
    monkeypatch.setattr(access, "CLOSED_RELAY_SECONDS", 0.05)

    async def scenario():
        f = front()
        f.peers["unix-abstract:a"] = ALICE
        f.forget_later("unix-abstract:a")
        f.peers["unix-abstract:a"] = MALLORY
        await asyncio.sleep(0.1)
        return f.peers.get("unix-abstract:a")

    assert asyncio.run(scenario()) == MALLORY
