"""Private inbox and directory-feed names: made once by provisioning, held by the agency's
credentials file and its read permission, never guessable from the agency code, kept
through re-provisioning, a deleted queue and a rotated password, masked in logs."""

from __future__ import annotations

import json
import os

import pytest

from broker import topology
from broker.connection import BrokerConfig, BrokerError
from broker.provision import agency_queues, provision, rotate
from keys.codes import AgencyCode
from tests.exchange import A, B, make_world

CODE = AgencyCode.parse(A)


def test_private_names_carry_128_random_bits_after_the_code():
    one, two = (topology.private_name(topology.inbox_prefix(CODE)) for _ in range(2))
    assert one != two
    for name in (one, two):
        assert name.startswith(f"cp.inbox.{A}.")
        assert topology.is_private_name(name, topology.inbox_prefix(CODE))
    assert not topology.is_private_name(f"cp.inbox.{A}", topology.inbox_prefix(CODE))
    assert not topology.is_private_name(f"cp.inbox.{A}.guess", topology.inbox_prefix(CODE))
    assert not topology.is_private_name(one.upper(), topology.inbox_prefix(CODE))


def test_logs_show_names_with_the_secret_part_masked():
    inbox = topology.private_name(topology.inbox_prefix(CODE))
    feed = topology.private_name(topology.directory_prefix(CODE))
    shown = topology.shown(f"{inbox}+{feed}+cp.submit.{A}")
    assert shown == f"cp.inbox.{A}.<private>+cp.directory.{A}.<private>+cp.submit.{A}"


def test_the_credentials_file_round_trips_the_queue_names(tmp_path):
    config = BrokerConfig("login", "pw", inbox="cp.inbox.x.1", feed="cp.directory.x.2")
    config.save(tmp_path / "c.json")
    again = BrokerConfig.load(tmp_path / "c.json")
    assert again.agency_queues() == ("cp.inbox.x.1", "cp.directory.x.2")
    assert "cp.inbox" not in repr(again) and "cp.inbox" not in again.describe()
    assert oct(os.stat(tmp_path / "c.json").st_mode & 0o777) == "0o600"


def test_an_older_credentials_file_says_how_to_get_new_ones(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"login": "x", "password": "y"}))
    path.chmod(0o600)
    with pytest.raises(BrokerError, match=r"no inbox queue .* \(`cipherpost broker rotate x`\)"):
        BrokerConfig.load(path).agency_queues()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("private"))
    yield w
    w.cleanup()


def test_provisioning_again_keeps_every_name(world):
    before = {code: world.broker(code).agency_queues() for code in (A, B)}
    result = provision(world.mgmt, world.vhost, world.directory, login_prefix=world.prefix)
    assert result.changes == [] and result.new_credentials == {}
    for code in (A, B):
        assert agency_queues(world.mgmt, world.vhost, world.login(code)) == before[code]


def test_a_deleted_inbox_comes_back_under_the_name_its_agency_holds(world):
    inbox, _ = world.broker(B).agency_queues()
    world.mgmt.delete(f"/api/queues/{world.mgmt.q(world.vhost)}/{world.mgmt.q(inbox)}")
    result = provision(world.mgmt, world.vhost, world.directory, login_prefix=world.prefix)
    shown = topology.shown(inbox)
    assert result.changes == [
        f"queue {shown} created",
        f"binding cp.deliver -[{B}]-> {shown} created",
    ]
    names = {q["name"] for q in world.mgmt.get(f"/api/queues/{world.mgmt.q(world.vhost)}")}
    assert inbox in names
    assert not any(n.startswith(f"cp.inbox.{B}.") and n != inbox for n in names)


def test_a_rotated_password_keeps_the_queue_names(world):
    login = world.login(A)
    before = world.broker(A)
    after = rotate(
        world.mgmt, login, vhost=world.vhost, credentials_dir=world.root / "broker-credentials"
    )
    assert after.password != before.password
    assert after.agency_queues() == before.agency_queues() == world.broker(A).agency_queues()
