"""Sandboxes' host ids are no one else's (isorund/id_range.py), read from this host's own
user and group databases and from subuid/subgid files the tests write."""
from isorund import id_range


def test_a_range_holding_a_hosts_user_names_it(monkeypatch, tmp_path):
    monkeypatch.setattr(id_range, "SUBORDINATE", ())
    assert "user 'root' (0)" in id_range.others_in(0, 1)


def test_a_range_overlapping_a_subordinate_range_names_its_owner_and_file(monkeypatch, tmp_path):
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\n# a comment\nbroken line\nbob: 1476256 :65536\n")
    monkeypatch.setattr(id_range, "SUBORDINATE", (str(subuid),))
    assert id_range.others_in(1_500_000, 65536) == [f"the subordinate ids of 'bob' in {subuid} (1476256-1541791)"]
    assert id_range.others_in(165536, 1000) == []  # just past alice's
    assert id_range.others_in(165535, 1) == [f"the subordinate ids of 'alice' in {subuid} (100000-165535)"]


def test_a_missing_subordinate_file_holds_nothing(tmp_path):
    assert id_range.subordinate_ranges(str(tmp_path / "none")) == []


def test_the_refusal_names_the_keys_and_at_most_five_holders(monkeypatch):
    monkeypatch.setattr(id_range, "SUBORDINATE", ())
    why = id_range.refusal(1, 1000)
    assert why.startswith("config keys sandbox_uid_base and sandbox_uid_count give sandboxes the host ids 1-1000")
    assert why.count("user '") <= 5 and " more;" in why
