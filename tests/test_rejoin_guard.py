"""A second stream under a user's own token never evicts the live one.

The real gRPC service with users in threads (the level of ``tests/test_resume.py``'s rejoin
tests): mid-session, a second ``run_user`` with user2's id and token connects while user2's
stream is alive. With another encoder its handshake fails the AP's rejoin check; with the same
handshake it is a second live stream. Both are refused with the reason, nothing of user2's
stream is touched, and the session's results equal an undisturbed run's.
"""

from __future__ import annotations

import threading

import grpc
import pytest
from semalign.client.stream import run_user, user_factory
from semalign.client.user import user_data_from_cache
from semalign.common.contract import TransportError
from semalign.common.credentials import user_token
from semalign.common.errors import LinkClosed, LinkError, ProtocolError
from semalign.server.grpc_link import Abort, GrpcLink
from synthetic import make_latents
from test_resume import CONFIG, SECRET, _grpc_run, assert_same_numbers

from semalign.engine.scenario import load_scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root, ap, users = make_latents(
        tmp_path_factory.mktemp("lat"), user_dims=(12, 20, 14), n_train=240
    )
    return load_scenario(root, ap, users)


@pytest.fixture(scope="module")
def undisturbed(scenario):
    results, reports, errors = _grpc_run(scenario, CONFIG, [3])
    assert not errors and results["lost"] == []
    return results


def _second_stream(scenario, encoder_of: int, at_round: int = 1):
    """An ``on_round`` hook: after ``at_round``, run a second user2 (its own id and token, the
    encoder and ordinal of user ``encoder_of + 1``) to its end while the driver waits."""
    seen: dict = {}

    def cut(service, seed, record):
        if record.round != at_round or seen:
            return
        enc = scenario.user_encoders[encoder_of]
        root = scenario.latents_dir
        factory = user_factory(
            "user2", enc, encoder_of, lambda pf: user_data_from_cache(root, enc, pf)
        )
        address = f"127.0.0.1:{service.bound_port}"

        def second():
            try:
                seen["reports"] = run_user(
                    address,
                    user_token(SECRET, "user2"),
                    factory,
                    connect_timeout=10,
                    user_id="user2",
                    rejoin_grace=10,
                )
            except Exception as exc:  # noqa: BLE001 - inspected by the test
                seen["error"] = exc

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        thread.join(30)
        seen["refused"] = dict(service.refused)

    return seen, cut


@pytest.fixture
def bound_port(monkeypatch):
    """Tell the hook the server's port: ``start_server`` notes it on the service."""
    import semalign.server.service as service_module

    original = service_module.start_server

    def start_server(service, *args, **kwargs):
        running = original(service, *args, **kwargs)
        service.bound_port = running.port
        return running

    monkeypatch.setattr("test_resume.start_server", start_server)


@pytest.mark.parametrize(
    ("encoder_of", "reason"),
    [
        (0, "refused the handshake: rejoin refused: rejoin of user2 with another encoder"),
        (1, "rejoin refused: user2 has a live stream"),
    ],
    ids=["mismatched-handshake", "matching-handshake"],
)
def test_second_stream_is_refused_and_the_live_user_finishes(
    scenario, undisturbed, bound_port, encoder_of, reason
):
    seen, cut = _second_stream(scenario, encoder_of)
    got, reports, errors = _grpc_run(scenario, CONFIG, [3], cut=cut)
    assert not errors, errors
    # the second stream was refused with the reason, and ended its command (before a session)
    assert isinstance(seen.get("error"), TransportError), seen
    assert reason in str(seen["error"]), seen["error"]
    assert "\n" not in str(seen["error"])
    code = "INVALID_ARGUMENT" if encoder_of == 0 else "ALREADY_EXISTS"
    assert seen["refused"].get(code) == 1, seen["refused"]
    # the genuine user2 was not touched: no drop, no rejoin, the undisturbed results
    assert got["lost"] == []
    assert got["seeds"][0]["wire"]["rejoins"] == []
    assert reports["user2"][0].status == "ok" and reports["user2"][0].rejoins == 0
    assert_same_numbers(got, undisturbed)


class _Context:
    def __init__(self, active=True) -> None:
        self.active = active

    def is_active(self) -> bool:
        return self.active


def test_rebind_replaces_only_a_stream_that_is_gone():
    """The link's rule: check first, refuse while alive, replace once gone."""
    link = GrpcLink("user1", b"first")
    link.binding.context = _Context()
    calls = []

    def check(handshake):
        calls.append(handshake)
        if handshake == b"other":
            raise ProtocolError("rejoin of user1 with another encoder")

    link.check_rejoins_with(check)
    assert link.receive(1) == b"first"
    refused = link.rebind(b"other", "peer2")
    assert isinstance(refused, Abort) and refused.code == grpc.StatusCode.INVALID_ARGUMENT
    live = link.rebind(b"same", "peer2")
    assert isinstance(live, Abort) and live.code == grpc.StatusCode.ALREADY_EXISTS
    assert calls == [b"other", b"same"]
    # nothing changed: the live stream is still the link's, no comeback pending
    assert link.wait_rejoin(0) is None and link.binding.generation == 0
    # the transport says the stream is gone (before its callback ran): a comeback takes over
    link.binding.context.active = False
    new = link.rebind(b"same", "peer2")
    assert not isinstance(new, Abort) and new.generation == 1
    new.context = _Context()
    assert link.wait_rejoin(0) == b"same"
    # a third stream while the one waiting to replace it is alive: refused too
    third = link.rebind(b"same", "peer3")
    assert isinstance(third, Abort) and third.code == grpc.StatusCode.ALREADY_EXISTS
    # the driver refuses the pending one: it alone ends, the link waits as before
    link.refuse_rejoin("rejoin refused: test")
    assert link.wait_rejoin(0) is None
    assert isinstance(new.outbox.get_nowait(), Abort)


def test_stream_ended_for_good_raises_link_error_not_link_closed():
    link = GrpcLink("user1", b"first")
    assert link.receive(1) == b"first"
    link._closed(link.binding, "message too large: over the AP's receive limit", final=True)
    with pytest.raises(LinkError) as err:
        link.receive(1)
    assert not isinstance(err.value, LinkClosed)
    assert "message too large" in str(err.value)
