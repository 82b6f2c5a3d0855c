"""What overlaps what in a session (server/session.py, client/stream.py): replies handed to the
AP as each arrives, a round's checkpoint written while the next round's messages travel (and
before their replies are taken), a user's whitening done before the accept arrives; none of it
changes a number."""

from __future__ import annotations

import numpy as np
from semalign.client.stream import prepare
from semalign.common.contract import SessionOffer
from semalign.server.session import SessionDriver
from test_pilot_stream import CONFIG, _session

from semalign.engine.loopback import LoopbackLink


class LoggedLink(LoopbackLink):
    """Records when the AP takes a reply from it."""

    def __init__(self, user, log: list) -> None:
        super().__init__(user)
        self.log = log

    def receive(self, timeout):
        data = super().receive(timeout)
        self.log.append(("receive", self.user.user_id))
        return data


def test_replies_are_handed_over_as_they_arrive():
    ap, users, test = _session(d=16, n=300)
    log: list = []
    receive = ap.receive

    def logged(user_id, data):
        log.append(("deliver", user_id))
        return receive(user_id, data)

    ap.receive = logged
    SessionDriver(ap, [LoggedLink(u, log) for u in users]).run(test, np.arange(len(test)))
    first_round = log[len(users) : 3 * len(users)]  # after the handshakes' requests
    expected = [(kind, u.user_id) for u in users for kind in ("receive", "deliver")]
    assert first_round == expected  # user1's upload is in the AP before user2's is taken


def test_a_rounds_checkpoint_is_written_while_the_next_round_travels():
    ap, users, test = _session(d=16, n=300)
    seen: list[tuple[int, bool, bool]] = []

    def checkpoint(driver: SessionDriver) -> None:
        states = list(driver.ap.users.values())
        sent = [len(u.received_rounds) for u in users]  # broadcasts the users have handled
        seen.append((driver.ap.round, all(s.upload is None for s in states), min(sent)))

    driver = SessionDriver(ap, [LoopbackLink(u) for u in users], checkpoint=checkpoint)
    result = driver.run(test, np.arange(len(test)))
    assert [r for r, _, _ in seen] == list(range(CONFIG.iterations + 1))  # handshake, rounds
    for after_round, (_, no_reply_taken, handled) in enumerate(seen[1:], start=1):
        # round t's checkpoint: round t+1's broadcasts (or the final one) are out, and none
        # of their replies has reached the AP yet
        assert handled == after_round + 1 and no_reply_taken
    # the same session without checkpoints has the same numbers
    ap2, users2, _ = _session(d=16, n=300)
    plain = SessionDriver(ap2, [LoopbackLink(u) for u in users2]).run(test, np.arange(len(test)))
    assert [r.mse for r in plain.rounds] == [r.mse for r in result.rounds]


def test_prepare_whitens_once_before_the_accept():
    ap, users, _ = _session(d=16, n=300)
    user = users[0]
    prepare(user, SessionOffer("s1", 0, 1, CONFIG, len(users)))
    assert any(key[0] == "evaluation" for key in user.data.memo)  # the test latents too
    # from now on whitening the pilots again would fail: the accept must find them ready
    user.data.pilot_latents = np.full_like(user.data.pilot_latents, np.nan)
    assert user.handle(ap.handshake(user.handshake_request())[1]) is None
    assert np.all(np.isfinite(user.y))
