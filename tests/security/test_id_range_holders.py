"""The host ids sandboxes run as are no one else's: a host process with a guest's uid needs no
privilege to read its memory, stop or kill it (a probe read another tenant's secret from a
live guest as such a user)."""
import pwd


def test_a_range_holding_a_host_users_id_refuses_the_start(start_daemon):
    nobody = pwd.getpwnam("nobody").pw_uid
    d = start_daemon(config=f"sandbox_uid_base = {nobody - 100}\nsandbox_uid_count = 200\n", wait=False)
    assert d.proc.wait(60) == 1
    assert (f"config keys sandbox_uid_base and sandbox_uid_count give sandboxes the host ids "
            f"{nobody - 100}-{nobody + 99}, which others hold: user 'nobody' ({nobody})") in d.log()
