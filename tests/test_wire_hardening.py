"""What protocol 3 refuses on receipt, naming it: a bfloat16 block with an exponent (honest
senders send 0), a dense A_l at the AP and a dense B = X X^H at a user (both are always
Hermitian-packed; the peer is dropped with the reason), and a packed matrix with NaN or
infinite values, refused without a RuntimeWarning on the way."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from semalign.common import half_precision as hp
from semalign.common.config import AlignmentConfig
from semalign.common.errors import ProtocolError
from semalign.common.wire import (
    check_matrix,
    from_matrix,
    parse_ap_message,
    parse_user_message,
    to_matrix,
)
from semalign.proto import semalign_pb2 as pb
from semalign.server.session import SessionDriver
from test_speed import _session

from semalign.engine.loopback import LoopbackLink

SMALL = {"antennas_tx": 2, "antennas_rx": 2, "channel_uses": 2, "task_model": "logistic"}


def test_a_bfloat16_block_with_an_exponent_is_refused():
    data, exponent = hp.encode(np.array([1.0, -2.5]), "bfloat16")
    assert exponent == 0 and hp.decode(data, "bfloat16", 0).tolist() == [1.0, -2.5]
    for bad in (1, -3):
        with pytest.raises(ProtocolError, match=f"bfloat16: exponent {bad}, expected 0"):
            hp.decode(data, "bfloat16", bad)
    message = to_matrix(np.eye(2), "float32", precision="bfloat16")
    message.exponent = 2
    with pytest.raises(ProtocolError, match="A: bfloat16: exponent 2"):
        check_matrix(message, "A", (2, 2), (message.dtype,))


class _DenseA(LoopbackLink):
    """Sends its A_l dense (as before protocol 3) in every upload."""

    def receive(self, timeout):
        data = super().receive(timeout)
        msg = parse_user_message(data)
        if msg.WhichOneof("body") == "upload":
            a = from_matrix(msg.upload.a)
            msg.upload.a.CopyFrom(to_matrix(a, a.dtype))
            return msg.SerializeToString()
        return data


class _DenseB(LoopbackLink):
    """Hands its user the compact accept's B = X X^H dense."""

    def send(self, data):
        msg = parse_ap_message(data)
        if msg.WhichOneof("body") == "accept" and msg.accept.HasField("pilot_gram"):
            b = from_matrix(msg.accept.pilot_gram)
            msg.accept.pilot_gram.CopyFrom(to_matrix(b, b.dtype))
            data = msg.SerializeToString()
        super().send(data)


@pytest.mark.parametrize(
    "link, protocol, reason",
    [
        (_DenseA, "paper", "A: layout DENSE (0), expected HERMITIAN"),
        (_DenseB, "compact", "pilot Gram matrix: layout DENSE (0), expected HERMITIAN"),
    ],
    ids=["dense-A-at-the-AP", "dense-B-at-a-user"],
)
def test_a_dense_matrix_that_protocol_3_packs_drops_the_peer(link, protocol, reason):
    config = AlignmentConfig(**{**SMALL, "iterations": 2, "protocol": protocol})
    ap, users, test = _session(config)
    links = [link(users[0])] + [LoopbackLink(u) for u in users[1:]]
    result = SessionDriver(ap, links).run(test, np.arange(len(test)))
    assert reason in result.dropped["user1"]
    assert set(result.reports) == {u.user_id for u in users[1:]}


@pytest.mark.parametrize("dtype", ["complex64", "float32", "complex128", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_packed_matrix_with_non_finite_values_is_refused_silently(dtype, bad):
    message = to_matrix(np.eye(3), dtype, hermitian=True)
    real = np.finfo(np.dtype(dtype)).dtype
    values = np.frombuffer(message.data, dtype=real).copy()
    values[[0, -1]] = bad
    message.data = values.tobytes()
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        with pytest.raises(ProtocolError, match="A contains NaN or infinite values"):
            check_matrix(message, "A", (3, 3), (message.dtype,), layouts=(pb.HERMITIAN,))
