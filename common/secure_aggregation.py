"""Secure aggregation of the users' local pre-equalizers (Bonawitz et al. 2017), as pure functions.

With ``--aggregation secure`` each user runs its own F-step (eqs. 13-14) and the AP learns only
the sum of the F_l (eq. 8 needs nothing else). Every user masks its contribution with pairwise
masks that cancel in the sum; a user that drops mid-round leaves its masks in the others'
uploads, and the AP removes them after reconstructing that user's masking key *of that round*
from Shamir shares held by the survivors.

One masking key per round. At the setup every user makes T masking key pairs (T rounds, known
from the handshake), publishes the T public keys and Shamir-shares each private key. Round r's
pair masks come from the round-r keys only, so a key rebuilt after a drop at round r opens
that round's masks and nothing of rounds 0..r-1 (whose uploads the AP holds) nor later ones.

Double masking (Bonawitz et al., section 4). Every upload also carries a *self mask*
:func:`self_mask`, PRG(b_u^r), whose seed b_u^r is the private scalar of the user's round-r
*self-mask key*, made and Shamir-shared like the masking keys (its public key lets the AP
check the seed it rebuilds, :func:`rebuild_key`). After each round's uploads the AP asks the
users whose upload arrived for their shares of the self-mask keys of those users and of the
masking keys of those that did not; an honest user gives one kind per user and round, never
both. An upload the AP holds therefore never loses both masks: a user it claims dropped after
its upload arrived keeps its self mask, and one whose self mask came off keeps its pair masks.

Primitives (none written here; all from maintained libraries):

* key agreement: ECDH on NIST P-256 (``cryptography``), the shared key derived by HKDF-SHA256
  (``flwr.common.secure_aggregation.crypto.symmetric_encryption.generate_shared_key``);
* encryption of the shares in transit through the AP: Fernet (AES-128-CBC + HMAC-SHA256, same
  Flower module), keyed by the two users' encryption keys;
* Shamir secret sharing of the masking private key over GF(2^128)
  (``flwr.common.secure_aggregation.crypto.shamir``, on PyCryptodome);
* the mask generator: the ChaCha20 key stream (``cryptography``) under a per-pair, per-round
  key HKDF(pair key, "semalign secagg mask" | session | round). Flower's own
  ``pseudo_rand_gen`` seeds numpy's Mersenne twister with 32 bits: not a cryptographic PRG.

Each user holds an *encryption* key pair (shares in transit), T *masking* key pairs (pairwise
masks, one per round) and T *self-mask* key pairs (self masks, one per round). Only the masking
and self-mask keys are Shamir-shared, so no reconstructed key opens the shares in transit.

Fixed point. A contribution is a real vector v (the real and imaginary parts of F_l, row-major,
then the user's two loss scalars). It is sent as q = round(v 2^:data:`FRACTION_BITS`) in the
ring Z / 2^64 (numpy ``uint64``, whose addition wraps modulo 2^64), plus the masks. The sum
over P participants is decoded as a signed 64-bit integer, which is exact when every |q| is
below 2^62 / P: :func:`quantize` refuses (:class:`QuantizationError`) any entry with
|v| >= 2^(62 - FRACTION_BITS) / P = 2^26 / P (about 6.7e7 / P) instead of wrapping. Honest
values are far smaller: entries of F_l are O(1) and the loss scalars at most about m/2. The
rounding error is at most 2^-37 (7.3e-12) per entry and user, so the decoded average is within
7.3e-12 of the exact one in every entry.
"""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidKey
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from semalign.common.errors import ProtocolError, SemalignError

#: fractional bits of the fixed-point encoding (quantization step 2^-36 = 1.5e-11)
FRACTION_BITS = 36
#: the sum of P contributions stays below 2^HEADROOM_BITS in magnitude (< 2^63: no wrap)
HEADROOM_BITS = 62
#: the curve of both key pairs
CURVE = ec.SECP256R1()
#: bytes of a compressed public key on :data:`CURVE`, and of a private scalar
PUBLIC_KEY_BYTES = 33
PRIVATE_KEY_BYTES = 32
_MASK_INFO = b"semalign secagg mask"
_SELF_MASK_INFO = b"semalign secagg self mask"
#: the two keys of each round whose shares a user's bundle holds, in this order: its masking
#: key (rebuilt when it drops) and its self-mask key (rebuilt when its upload arrived)
MASKING, SELF_MASK = "masking", "self-mask"
KEY_KINDS = (MASKING, SELF_MASK)
#: bytes of one Shamir share of a private scalar (4-byte index, three 16-byte chunks of the
#: PKCS#7-padded 32-byte scalar)
SHARE_BYTES = 4 + 48
#: t-subsets of the revealed shares tried before a key counts as unrecoverable
MAX_SUBSETS = 256
_SHARE_HEADER = b"semalign secagg share"


def _shamir():
    """Flower's Shamir module, imported on first use (a user process without secure
    aggregation never loads Flower for it)."""
    from flwr.common.secure_aggregation.crypto import shamir

    return shamir


def _symmetric():
    """Flower's key agreement and Fernet helpers, imported on first use."""
    from flwr.common.secure_aggregation.crypto import symmetric_encryption

    return symmetric_encryption


class QuantizationError(SemalignError):
    """A contribution too large for the fixed-point ring: refused rather than wrapped."""


@dataclass(frozen=True)
class UserKeys:
    """A user's long-lived private key: ``encryption`` (its shares in transit). Its masking
    keys are made at the setup, one per round (:func:`round_keys`)."""

    encryption: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> UserKeys:
        """A fresh key pair from the operating system's randomness."""
        return cls(ec.generate_private_key(CURVE))

    @property
    def public(self) -> bytes:
        """The encryption public key, a compressed point of 33 bytes (the handshake's)."""
        return public_bytes(self.encryption.public_key())


def round_keys(rounds: int) -> list[ec.EllipticCurvePrivateKey]:
    """``rounds`` fresh key pairs (masking or self-mask keys), round r's at position r."""
    if rounds < 1:
        raise ProtocolError(f"secure aggregation: {rounds} rounds of keys")
    return [ec.generate_private_key(CURVE) for _ in range(rounds)]


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The compressed X9.62 encoding of a public key (33 bytes)."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def load_public(data: bytes, what: str) -> ec.EllipticCurvePublicKey:
    """A public key on :data:`CURVE` from its compressed encoding; ProtocolError if invalid."""
    if len(data) != PUBLIC_KEY_BYTES:
        raise ProtocolError(f"{what}: {len(data)} bytes, expected {PUBLIC_KEY_BYTES}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, bytes(data))
    except ValueError:
        raise ProtocolError(f"{what}: not a point of {CURVE.name}") from None


def private_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The private scalar, 32 bytes big-endian (what is Shamir-shared)."""
    return key.private_numbers().private_value.to_bytes(PRIVATE_KEY_BYTES, "big")


def load_private(data: bytes) -> ec.EllipticCurvePrivateKey:
    """The private key of a 32-byte scalar; ProtocolError if it is not a valid scalar."""
    if len(data) != PRIVATE_KEY_BYTES:
        raise ProtocolError(f"a private key of {len(data)} bytes, expected {PRIVATE_KEY_BYTES}")
    try:
        return ec.derive_private_key(int.from_bytes(data, "big"), CURVE)
    except ValueError:
        raise ProtocolError("a reconstructed key is not a valid scalar") from None


def pair_secret(private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> bytes:
    """The key two users share (ECDH + HKDF-SHA256, 32 bytes urlsafe-base64): the same from
    either side, ``pair_secret(a, B) == pair_secret(b, A)``."""
    try:
        return _symmetric().generate_shared_key(private, public)
    except (ValueError, InvalidKey) as exc:
        raise ProtocolError(f"key agreement failed: {exc}") from None


def threshold_for(participants: int) -> int:
    """Shares needed to rebuild a masking key: a majority of the participants, at least 2.

    With P participants a round survives P - t drops; t > P / 2 keeps a minority of colluding
    users (with the AP) from rebuilding an honest user's key."""
    return max(2, participants // 2 + 1)


# ---------------------------------------------------------------------- masks
def _key_stream(material: bytes, info: bytes, size: int) -> np.ndarray:
    """(size,) uint64: the ChaCha20 key stream under HKDF-SHA256(``material``, ``info``), read
    as little-endian uint64 (uniform on Z / 2^64)."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * size)), dtype="<u8").astype(np.uint64)


def pair_mask(secret: bytes, session_id: str, round_: int, size: int) -> np.ndarray:
    """The mask (size,) uint64 of one pair of users in one round: the ChaCha20 key stream
    under HKDF(``secret``, info = "semalign secagg mask" | session | round), read as
    little-endian uint64 (uniform on Z / 2^64)."""
    info = b"|".join((_MASK_INFO, session_id.encode(), str(round_).encode()))
    return _key_stream(base64.urlsafe_b64decode(secret), info, size)


def self_mask(
    key: ec.EllipticCurvePrivateKey, session_id: str, owner: int, round_: int, size: int
) -> np.ndarray:
    """User ``owner``'s self mask (size,) uint64 of ``round_``, PRG(b_u^r): the ChaCha20 key
    stream under HKDF(b_u^r, info = "semalign secagg self mask" | session | owner | round),
    b_u^r the 32-byte private scalar of its self-mask ``key`` of that round."""
    info = b"|".join((_SELF_MASK_INFO, session_id.encode(), str(owner).encode()))
    return _key_stream(private_bytes(key), info + b"|" + str(round_).encode(), size)


def mask_sum(
    own: int, secrets: Mapping[int, bytes], session_id: str, round_: int, size: int
) -> np.ndarray:
    """Sum (size,) uint64 of user ``own``'s signed pairwise masks with every peer in
    ``secrets`` (index -> pair secret): + for a peer of higher index, - for a lower one, so
    that the masks of every pair cancel in the sum of both users' uploads (mod 2^64)."""
    total = np.zeros(size, dtype=np.uint64)
    for peer, secret in secrets.items():
        if peer == own:
            raise ProtocolError(f"user {own} listed as its own peer")
        mask = pair_mask(secret, session_id, round_, size)
        total = total + mask if own < peer else total - mask
    return total


def remove_self_masks(
    total: np.ndarray,
    keys: Mapping[int, ec.EllipticCurvePrivateKey],
    session_id: str,
    round_: int,
) -> np.ndarray:
    """``total`` (size,) uint64, a sum of uploads of ``round_``, without the self masks of
    their senders (index -> its self-mask private key of ``round_``)."""
    for owner, key in keys.items():
        total = total - self_mask(key, session_id, owner, round_, len(total))
    return total


def unmask_dropped(
    total: np.ndarray,
    key: ec.EllipticCurvePrivateKey,
    dropped: int,
    peers: Mapping[int, ec.EllipticCurvePublicKey],
    session_id: str,
    round_: int,
) -> np.ndarray:
    """``total`` (size,) uint64, the sum of the uploads of ``peers`` (index -> their masking
    public key of ``round_``), without the masks they share with ``dropped``, whose masking
    private key of ``round_`` is ``key``. Those masks sum to minus ``dropped``'s own
    :func:`mask_sum`, which is added back."""
    secrets = {index: pair_secret(key, public) for index, public in peers.items()}
    return total + mask_sum(dropped, secrets, session_id, round_, len(total))


# ---------------------------------------------------------------------- fixed point
def value_limit(participants: int) -> float:
    """Largest |value| a contribution may hold for a sum of ``participants`` to decode."""
    return 2.0 ** (HEADROOM_BITS - FRACTION_BITS) / max(participants, 1)


def quantize(values: np.ndarray, participants: int) -> np.ndarray:
    """Fixed-point (size,) uint64 of real ``values`` (size,): round(v 2^36) mod 2^64
    (2^:data:`FRACTION_BITS`).

    Raises QuantizationError for a non-finite value or one with |v| >= :func:`value_limit`
    (the sum of ``participants`` such values could wrap)."""
    values = np.asarray(values, dtype=np.float64)
    limit = value_limit(participants)
    if not np.all(np.isfinite(values)):
        raise QuantizationError("secure aggregation: a contribution has NaN or infinite values")
    largest = float(np.max(np.abs(values), initial=0.0))
    if largest >= limit:
        raise QuantizationError(
            f"secure aggregation: a contribution entry of magnitude {largest:.3g} exceeds the "
            f"fixed-point limit {limit:.3g} (2^{HEADROOM_BITS - FRACTION_BITS} / "
            f"{participants} participants)"
        )
    return np.rint(values * 2.0**FRACTION_BITS).astype(np.int64).view(np.uint64)


def decode_sum(total: np.ndarray) -> np.ndarray:
    """The real sum (size,) float64 of unmasked fixed-point contributions (size,) uint64."""
    return np.asarray(total, dtype=np.uint64).view(np.int64).astype(np.float64) / 2.0**FRACTION_BITS


def ring_sum(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Sum modulo 2^64 of uint64 arrays of one shape."""
    if not arrays:
        raise ProtocolError("secure aggregation: nothing to sum")
    total = np.zeros_like(arrays[0], dtype=np.uint64)
    for array in arrays:
        total = total + array
    return total


# ---------------------------------------------------------------------- shares
def split_key(key: ec.EllipticCurvePrivateKey, threshold: int, count: int) -> list[bytes]:
    """``count`` Shamir shares of the private scalar, any ``threshold`` of which rebuild it."""
    if not 2 <= threshold <= count:
        raise ProtocolError(f"secure aggregation: threshold {threshold} for {count} shares")
    return _shamir().create_shares(private_bytes(key), threshold, count)


def combine_key(shares: Sequence[bytes]) -> ec.EllipticCurvePrivateKey:
    """The private key from at least a threshold of its shares (ProtocolError if they do not
    make a valid key: too few, or not shares of one secret)."""
    if len({bytes(s[:4]) for s in shares}) != len(shares) or len({len(s) for s in shares}) != 1:
        raise ProtocolError("secure aggregation: shares with repeated indices or lengths")
    try:
        return load_private(_shamir().combine_shares([bytes(s) for s in shares]))
    except ValueError as exc:
        raise ProtocolError(f"secure aggregation: cannot combine shares: {exc}") from None


def split_round_keys(
    keys: Sequence[ec.EllipticCurvePrivateKey], threshold: int, count: int
) -> list[bytes]:
    """Per share holder (position 0..count-1), its shares of every key in ``keys`` concatenated
    (len(keys) * :data:`SHARE_BYTES` bytes; the share of ``keys[k]`` at offset k * SHARE_BYTES).
    A user's bundle: its T masking keys, then its T self-mask keys (:data:`KEY_KINDS`)."""
    per_key = [split_key(key, threshold, count) for key in keys]
    return [b"".join(shares[position] for shares in per_key) for position in range(count)]


def round_share(bundle: bytes, round_: int, rounds: int, kind: str = MASKING) -> bytes:
    """The share of round ``round_``'s key of ``kind`` (:data:`KEY_KINDS`) out of a
    :func:`split_round_keys` bundle of a user's T = ``rounds`` masking keys and T self-mask
    keys; ProtocolError if the bundle has another length."""
    size = len(KEY_KINDS) * rounds * SHARE_BYTES
    if len(bundle) != size or not 0 <= round_ < rounds or kind not in KEY_KINDS:
        raise ProtocolError(
            f"secure aggregation: a share bundle of {len(bundle)} bytes for the {kind} key of "
            f"round {round_} of {rounds} (expected {size})"
        )
    start = (KEY_KINDS.index(kind) * rounds + round_) * SHARE_BYTES
    return bundle[start : start + SHARE_BYTES]


def share_index(share: bytes) -> int:
    """The Shamir x-coordinate of a share (its holder's position + 1)."""
    return int.from_bytes(share[:4], "little")


def _matches(shares: Sequence[bytes], public: bytes) -> ec.EllipticCurvePrivateKey | None:
    """The key the ``shares`` combine to if its public key is ``public``, else None."""
    try:
        key = combine_key(shares)
    except ProtocolError:
        return None
    return key if public_bytes(key.public_key()) == public else None


def rebuild_key(
    shares: Mapping[int, bytes], threshold: int, public: bytes
) -> tuple[ec.EllipticCurvePrivateKey, list[int]]:
    """(the private key of ``public``, the senders whose shares are not on its polynomial)
    from ``shares`` (sender -> share; each x-coordinate once, checked by the caller).

    All shares are combined first; if that fails the public-key check, t-subsets are tried
    (at most :data:`MAX_SUBSETS`) until one does, then every other share is checked with t - 1
    shares of that subset. ProtocolError if no subset rebuilds the key."""
    senders = sorted(shares)
    if len(senders) < threshold:
        raise ProtocolError(
            f"secure aggregation: {len(senders)} shares of a key, {threshold} needed"
        )
    key = _matches([shares[s] for s in senders], public)
    if key is not None:
        return key, []
    for subset in itertools.islice(itertools.combinations(senders, threshold), MAX_SUBSETS):
        key = _matches([shares[s] for s in subset], public)
        if key is not None:
            base = [shares[s] for s in subset[:-1]]
            bad = [
                s
                for s in senders
                if s not in subset and _matches([*base, shares[s]], public) is None
            ]
            return key, bad
    raise ProtocolError(
        f"secure aggregation: no {threshold} of the {len(senders)} revealed shares rebuild the "
        "key (tried the first "
        f"{min(MAX_SUBSETS, math.comb(len(senders), threshold))} subsets)"
    )


def _share_header(session_id: str, sender: int, recipient: int) -> bytes:
    return (
        b"|".join(
            (_SHARE_HEADER, session_id.encode(), str(sender).encode(), str(recipient).encode())
        )
        + b"|"
    )


def seal_share(secret: bytes, session_id: str, sender: int, recipient: int, share: bytes) -> bytes:
    """A share encrypted for its recipient under their pair ``secret`` (Fernet), bound to the
    session and both indices so that the AP cannot replay it elsewhere."""
    return _symmetric().encrypt(secret, _share_header(session_id, sender, recipient) + share)


def open_share(secret: bytes, session_id: str, sender: int, recipient: int, sealed: bytes) -> bytes:
    """The share inside :func:`seal_share`'s ciphertext; ProtocolError if it does not decrypt
    or was sealed for another session, sender or recipient."""
    try:
        plain = _symmetric().decrypt(secret, bytes(sealed))
    except (InvalidToken, ValueError, TypeError):
        raise ProtocolError(f"share from user {sender} does not decrypt") from None
    header = _share_header(session_id, sender, recipient)
    if not plain.startswith(header):
        raise ProtocolError(f"share from user {sender} was sealed for another session or pair")
    return plain[len(header) :]


# ---------------------------------------------------------------------- contributions
def pack_contribution(f: np.ndarray, terms: Sequence[float], *, real: bool) -> np.ndarray:
    """A user's contribution (size,) float64: F_l (rows, cols) row-major (its real part when
    ``real``, the widely-linear representation; else interleaved real and imaginary parts),
    then the loss scalars ``terms``."""
    body = np.real(f) if real else np.asarray(f, dtype=np.complex128)
    flat = np.ascontiguousarray(body, dtype=np.float64 if real else np.complex128).reshape(-1)
    return np.concatenate([flat.view(np.float64), np.asarray(terms, dtype=np.float64)])


def contribution_size(shape: tuple[int, int], terms: int, *, real: bool) -> int:
    """Entries of :func:`pack_contribution` for F of ``shape`` and ``terms`` scalars."""
    return math.prod(shape) * (1 if real else 2) + terms


def unpack_contribution(
    values: np.ndarray, shape: tuple[int, int], terms: int, *, real: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(F (rows, cols) complex128, the ``terms`` scalars) of a packed vector."""
    body = np.ascontiguousarray(values[: len(values) - terms], dtype=np.float64)
    f = body.astype(np.complex128) if real else body.view(np.complex128)
    return f.reshape(shape), np.asarray(values[len(values) - terms :], dtype=np.float64)
