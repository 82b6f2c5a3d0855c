"""Crash and come back: checkpoints, resume after the AP dies, rejoin, stragglers, lost users.

Driver-level tests run the AP and users in this process (the crash is an exception raised
right after a checkpoint was written, which is what kill -9 leaves behind); the networked ones
run the gRPC service with users in threads, and real `semalign ap` / `semalign user` processes.
"""

from __future__ import annotations

import math
import threading
import time

import grpc
import numpy as np
import pytest
from semalign.client.stream import run_user, user_factory
from semalign.client.user import user_data_from_cache
from semalign.common.config import AlignmentConfig
from semalign.common.credentials import user_token
from semalign.common.errors import CheckpointError, LinkClosed, LinkTimeout
from semalign.common.network_records import Straggler
from semalign.server.access_point import build_access_point
from semalign.server.checkpoint import Checkpoint, capture, load, restore, run_key, save
from semalign.server.grpc_link import Abort
from semalign.server.network import SessionHooks, SessionsPlan, serve_sessions
from semalign.server.results import seed_result
from semalign.server.serve_settings import ServeSettings
from semalign.server.service import AlignmentService, start_server
from semalign.server.session import SessionDriver, WaitPolicy
from synthetic import make_latents

from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import build_session, load_scenario

CONFIG = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=5)
#: keys whose values are timings or wire counters (not compared)
#: provenance: a resumed run has its own start time and command line
UNCOMPARED = {"seconds", "wire", "network", "join_s", "session_s", "total_s", "provenance"}


class Crash(Exception):
    """The AP process dies here (after its checkpoint is on disk)."""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root, ap, users = make_latents(
        tmp_path_factory.mktemp("lat"), user_dims=(12, 20, 14), n_train=240
    )
    return load_scenario(root, ap, users)


def assert_same_numbers(got, want, path="results"):
    """Every number equal to 1e-9 (relative), timings and wire counters aside."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            if key not in UNCOMPARED:
                assert_same_numbers(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_numbers(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not math.isnan(want):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), path
    elif isinstance(want, float):
        assert math.isnan(got), path
    else:
        assert got == want, path


def _session(scenario, config, **driver_options):
    ap, users = build_session(scenario, config)
    return ap, SessionDriver(ap, [LoopbackLink(u) for u in users], **driver_options)


def _evaluate(driver, scenario):
    return driver.run(scenario.ap_test, np.arange(len(scenario.ap_test), dtype=np.int64))


def _comparable(result, seed):
    return seed_result(result, seed).to_dict()


@pytest.mark.parametrize("strategy", ["fed", "multi-link"])
@pytest.mark.parametrize("crash_round", [1, 4])
def test_driver_resume_after_crash_equals_undisturbed(scenario, tmp_path, strategy, crash_round):
    config = CONFIG.model_copy(update={"strategy": strategy, "seed": 3})
    _, driver = _session(scenario, config)
    want = _comparable(_evaluate(driver, scenario), 3)

    path, key = tmp_path / "ap.checkpoint", run_key(config, [3], 3)
    ap, driver = _session(scenario, config)

    def checkpoint(driver):
        save(path, Checkpoint(key, {}, [3], current=capture(ap, driver, 0)))
        if ap.round == crash_round:
            raise Crash

    driver.checkpoint = checkpoint
    with pytest.raises(Crash):
        _evaluate(driver, scenario)

    state = load(path, key).current
    assert state.round == crash_round and len(state.records) == crash_round
    ap2, users2 = build_session(scenario, config)  # a new process: fresh state machines
    restored = restore(ap2, state)
    links = [LoopbackLink(u) for u in users2]
    driver2 = SessionDriver(ap2, links, resumed=True, restored=restored)
    got = _comparable(_evaluate(driver2, scenario), 3)
    assert_same_numbers(got, want)
    assert all(u["accuracy"] is not None for u in got["users"])


def test_checkpoint_refuses_damage_and_other_runs(scenario, tmp_path):
    config = CONFIG.model_copy(update={"seed": 3})
    ap, driver = _session(scenario, config)
    path, key = tmp_path / "ap.checkpoint", run_key(config, [3], 3)
    driver.checkpoint = lambda d: save(path, Checkpoint(key, {}, [3], current=capture(ap, d, 0)))
    _evaluate(driver, scenario)
    data = path.read_bytes()
    assert load(path, key).current.round == CONFIG.iterations
    cases = {
        "truncated": data[: len(data) // 2],
        "flipped": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:],
        "version": data.replace(b"CHECKPOINT 1", b"CHECKPOINT 9", 1),
        "not ours": b"hello\n",
        "empty": b"",
    }
    for name, content in cases.items():
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="checkpoint"):
            load(path, key)
        assert name
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="another run"):
        load(path, run_key(config, [3, 4], 3))
    other = build_session(scenario, config.model_copy(update={"pilot_fraction": 0.5}))[0]
    with pytest.raises(CheckpointError, match="pilot latents differ"):
        restore(other, load(path, key).current)


# --------------------------------------------------------------------------- stragglers
class HoldingLink(LoopbackLink):
    """A user that does not answer in time at round ``hold`` (it sleeps for the wait the driver
    allows and reports a timeout, as a stalled peer would); later waits get its reply."""

    def __init__(self, user, hold: int, ap) -> None:
        super().__init__(user)
        self.hold, self.ap, self.held = hold, ap, False

    def receive(self, timeout):
        if self.ap.round == self.hold and self.ap.expecting == "upload" and not self.held:
            self.held = True
            assert timeout is not None  # the driver never waits forever here
            time.sleep(timeout)
            raise LinkTimeout(f"no reply within {timeout:g} s")
        return super().receive(timeout)


def _held_session(scenario, config, policy):
    ap, users = build_session(scenario, config)
    links = [HoldingLink(u, 2, ap) if u.user_id == "user2" else LoopbackLink(u) for u in users]
    return SessionDriver(ap, links, policy=policy)


def test_straggler_dropped_at_the_round_deadline(scenario):
    config = CONFIG.model_copy(update={"seed": 3})
    policy = WaitPolicy(reply_timeout=30, round_deadline=0.2, stragglers="drop")
    result = _evaluate(_held_session(scenario, config, policy), scenario)
    assert result.dropped == {
        "user2": "round 2: straggler: no reply within 0.2 s at round 2",
    }
    assert result.stragglers == [Straggler("user2", 2, "round", 0.2)]
    assert "user2" not in result.reports and set(result.reports) == {"user1", "user3"}
    assert [r.users for r in result.rounds] == [3, 3, 2, 2, 2]


def test_straggler_waited_for_gives_the_undisturbed_results(scenario):
    config = CONFIG.model_copy(update={"seed": 3})
    _, driver = _session(scenario, config)
    want = _comparable(_evaluate(driver, scenario), 3)
    policy = WaitPolicy(reply_timeout=30, round_deadline=0.2, stragglers="wait")
    result = _evaluate(_held_session(scenario, config, policy), scenario)
    assert result.stragglers == [Straggler("user2", 2, "round", 0.2)]
    assert not result.dropped
    assert_same_numbers(_comparable(result, 3), want)


# --------------------------------------------------------------------------- gRPC: rejoin
SECRET = "resume-secret-0123456789"


def _grpc_run(
    scenario, config, seeds, *, cut=None, grace=20.0, expected=None, users=None, **options
):
    """serve_sessions over real gRPC with users in threads; ``cut(service, seed, record)`` runs
    after each round (to break a user's stream)."""
    service = AlignmentService(SECRET)
    server = start_server(service, "127.0.0.1:0")
    root = scenario.latents_dir
    encoders = scenario.user_encoders[: users or len(scenario.user_encoders)]
    reports, errors, threads = {}, {}, []
    for ordinal, enc in enumerate(encoders):
        uid = f"user{ordinal + 1}"
        factory = user_factory(
            uid, enc, ordinal, lambda pf, enc=enc: user_data_from_cache(root, enc, pf)
        )

        def target(uid=uid, factory=factory):
            try:
                reports[uid] = run_user(
                    server.address,
                    user_token(SECRET, uid),
                    factory,
                    connect_timeout=20,
                    user_id=uid,
                    rejoin_grace=grace,
                )
            except Exception as exc:  # noqa: BLE001 - reported to the test
                errors[uid] = exc

        threads.append(threading.Thread(target=target, daemon=True))
        threads[-1].start()
    expected = expected or [f"user{i + 1}" for i in range(len(scenario.user_encoders))]
    try:
        plan = SessionsPlan(
            lambda cfg: build_access_point(scenario.ap_train, cfg, len(scenario.user_encoders)),
            config,
            seeds,
            scenario.ap_test,
        )
        settings = ServeSettings(
            expected,
            join_timeout=options.pop("join_timeout", 20),
            policy=WaitPolicy(reply_timeout=20, rejoin_grace=grace),
            **options,
        )
        hooks = SessionHooks(on_round=(lambda s, r, w: cut(service, s, r)) if cut else None)
        results = serve_sessions(service, plan, settings, hooks).to_dict()  # the JSON
        for thread in threads:
            thread.join(30)
    finally:
        server.stop()
    return results, reports, errors


def _cut(user_id: str, at_round: int):
    """Break ``user_id``'s stream (UNAVAILABLE, as a network failure does) after a round."""
    done = set()

    def cut(service, seed, record):
        if record.round == at_round and seed not in done:
            done.add(seed)
            link = service._lobby.links[user_id]
            link.binding.outbox.put(Abort(grpc.StatusCode.UNAVAILABLE, "cut by the test"))

    return cut


@pytest.mark.parametrize("strategy", ["fed", "multi-link"])
def test_grpc_user_whose_stream_breaks_rejoins_and_nothing_changes(scenario, strategy):
    config = CONFIG.model_copy(update={"strategy": strategy})
    want, _, errors = _grpc_run(scenario, config, [3])
    assert not errors and want["lost"] == []
    # mid-session (round 2's broadcast) and at the final broadcast (after the last round)
    cut = _cut("user2", 1)
    last = _cut("user3", CONFIG.iterations - 1)
    got, reports, errors = _grpc_run(scenario, config, [3], cut=lambda *a: (cut(*a), last(*a)))
    assert not errors, errors
    assert_same_numbers(got, want)
    assert got["lost"] == []
    rejoins = got["seeds"][0]["wire"]["rejoins"]
    assert {(r["user"], r["phase"]) for r in rejoins} == {("user2", "round"), ("user3", "final")}
    assert reports["user2"][0].rejoins == 1 and reports["user2"][0].status == "ok"


def test_grpc_lost_users_listed_with_a_count_of_users(scenario):
    """--users N with a user that never joins: it is listed (its id unknown), so is the drop."""
    config = CONFIG.model_copy(update={"seed": 3})
    results, _, errors = _grpc_run(scenario, config, [3], users=2, expected=3, join_timeout=3)
    assert not errors
    assert results["network"]["not_joined"] == {"3": ["(unnamed user 3 of 3)"]}
    assert results["lost"] == [
        {"seed": 3, "user": "(unnamed user 3 of 3)", "reason": "never joined"}
    ]


class VanishingLink(LoopbackLink):
    """A user whose stream ends at round 1 and never comes back."""

    def __init__(self, user, ap) -> None:
        super().__init__(user)
        self.ap, self.waited = ap, []

    def receive(self, timeout):
        if self.ap.round == 1 and self.ap.expecting == "upload":
            raise LinkClosed("the stream ended (user gone)")
        return super().receive(timeout)

    def wait_rejoin(self, timeout):
        self.waited.append(timeout)
        return None


def test_user_that_does_not_come_back_within_the_grace_is_dropped(scenario):
    ap, users = build_session(scenario, CONFIG.model_copy(update={"seed": 3}))
    vanishing = VanishingLink(users[0], ap)
    links = [vanishing, *(LoopbackLink(u) for u in users[1:])]
    driver = SessionDriver(ap, links, policy=WaitPolicy(reply_timeout=30, rejoin_grace=7.5))
    result = _evaluate(driver, scenario)
    assert vanishing.waited == [7.5]  # it was given its grace, once
    assert result.dropped == {
        "user1": "round 1: round: the stream ended (user gone); it did not come back within 7.5 s"
    }
    assert set(result.reports) == {"user2", "user3"}
