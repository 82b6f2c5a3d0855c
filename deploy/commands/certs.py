"""``semalign certs``: the secrets of a deployment, one folder per host.

::

    secrets/
      ca.key                    the CA's private key: stays with the operator, never mounted
      ca.pem                    the CA certificate (public)
      ap/ca.pem                 verifies users' client certificates (mutual TLS)
      ap/server.pem, server.key the AP's certificate for the alignment service and the Flower
                                SuperLink; names: compose service "ap", the given --name values,
                                localhost, 127.0.0.1 (the SuperLink's own SuperExec and the
                                `flwr` CLI connect to it over loopback)
      ap/supernodes/<user>.pub  each user's SuperNode public key (registered with the SuperLink:
                                SuperNode authentication)
      <user>/ca.pem             verifies the AP (alignment service and SuperLink)
      <user>/client.pem, .key   the user's client certificate (CN and DNS name: the user id)
      <user>/supernode.key      the user's SuperNode private key (EC P-384, OpenSSH format)

Private keys are written with mode 0600 (``--owner`` gives the files to the uid the containers
run as; the image's user is 1000). Existing files are never overwritten: run it again with more
users and only the new users' files are made (with the same CA).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from semalign.common.errors import UsageError

#: Names always in the AP's certificate: loopback (SuperExec, flwr CLI, local users).
LOOPBACK_NAMES = ("localhost", "127.0.0.1")
CA_CN = "semalign deployment CA"


@dataclass(frozen=True)
class _SecretsFolder:
    """A folder made by :func:`make_secrets`; ``required`` names what :meth:`check` needs."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    def required(self) -> tuple[Path, ...]:
        raise NotImplementedError

    def check(self) -> None:
        for path in self.required():
            if not path.is_file():
                raise UsageError(f"--secrets {self.root}: no {path.name} (make it: semalign certs)")


@dataclass(frozen=True)
class ApSecrets(_SecretsFolder):
    """Paths in an AP folder made by :func:`make_secrets`."""

    @property
    def cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def key(self) -> Path:
        return self.root / "server.key"

    @property
    def supernode_keys(self) -> list[Path]:
        return sorted((self.root / "supernodes").glob("*.pub"))

    def required(self) -> tuple[Path, ...]:
        return (self.ca, self.cert, self.key)


@dataclass(frozen=True)
class UserSecrets(_SecretsFolder):
    """Paths in a user folder made by :func:`make_secrets`."""

    @property
    def cert(self) -> Path:
        return self.root / "client.pem"

    @property
    def key(self) -> Path:
        return self.root / "client.key"

    @property
    def supernode_key(self) -> Path:
        return self.root / "supernode.key"

    def required(self) -> tuple[Path, ...]:
        return (self.ca, self.cert, self.key, self.supernode_key)


# ---------------------------------------------------------------------------- crypto
def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _ec_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP384R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(data: bytes):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(data, None)


def _san(names: Iterable[str]):
    from cryptography import x509

    entries = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _cert(subject_cn: str, key, issuer_cert, issuer_key, *, days: int, ca=False, names=(), usage):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    issuer = issuer_cert.subject if issuer_cert is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        eku = {
            "server": [ExtendedKeyUsageOID.SERVER_AUTH],
            "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
        }[usage]
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), True
        )
        builder = builder.add_extension(_san(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _ssh_keypair() -> tuple[bytes, bytes]:
    """An EC P-384 key pair in OpenSSH format (Flower's SuperNode authentication keys)."""
    from cryptography.hazmat.primitives import serialization

    key = _ec_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


# ---------------------------------------------------------------------------- files
@dataclass
class _Writer:
    owner: tuple[int, int] | None
    made: list[Path]

    def write(self, path: Path, data: bytes, *, private: bool = False) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._own(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        self._own(path)
        self.made.append(path)

    def _own(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, *self.owner)


def parse_owner(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    uid, _, gid = spec.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise UsageError(f"--owner must be UID[:GID], got {spec!r}") from None


def make_secrets(
    out: Path | str,
    users: Sequence[str],
    *,
    names: Sequence[str] = ("ap",),
    days: int = 365,
    owner: tuple[int, int] | None = None,
) -> list[Path]:
    """Make (or complete) the secrets folder ``out`` for an AP and ``users``; the files made."""
    from cryptography import x509
    from semalign.common.credentials import check_user_id

    for user in users:
        try:
            check_user_id(user)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if user in ("ap", "ca"):
            raise UsageError(f"user id {user!r} is reserved")
    out = Path(out)
    writer = _Writer(owner, [])
    ca_key_path, ca_path = out / "ca.key", out / "ca.pem"
    if ca_key_path.exists() and ca_path.exists():
        ca_key = _load_key(ca_key_path.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    else:
        ca_key = _ec_key()
        ca_cert = _cert(CA_CN, ca_key, None, ca_key, days=days, ca=True, usage=None)
        writer.write(ca_key_path, _pem_key(ca_key), private=True)
        writer.write(ca_path, _pem_cert(ca_cert))
    ca_pem = ca_path.read_bytes()
    ap = ApSecrets(out / "ap")
    writer.write(ap.ca, ca_pem)
    if not ap.cert.exists():
        key = _ec_key()
        cert = _cert(
            names[0] if names else "ap",
            key,
            ca_cert,
            ca_key,
            days=days,
            names=[*names, *LOOPBACK_NAMES],
            usage="server",
        )
        writer.write(ap.key, _pem_key(key), private=True)
        writer.write(ap.cert, _pem_cert(cert))
    for user in users:
        mine = UserSecrets(out / user)
        writer.write(mine.ca, ca_pem)
        if not mine.cert.exists():
            key = _ec_key()
            cert = _cert(user, key, ca_cert, ca_key, days=days, names=[user], usage="client")
            writer.write(mine.key, _pem_key(key), private=True)
            writer.write(mine.cert, _pem_cert(cert))
        if not mine.supernode_key.exists():
            private, public = _ssh_keypair()
            writer.write(mine.supernode_key, private, private=True)
            writer.write(ap.root / "supernodes" / f"{user}.pub", public)
    return writer.made


def user_ids(spec: str) -> list[str]:
    """The users of ``--num-users N`` (user1..userN) or ``--user-ids IDS`` (comma-separated)."""
    spec = spec.strip()
    if spec.isdigit():
        return [f"user{i}" for i in range(1, int(spec) + 1)]
    return [u.strip() for u in spec.split(",") if u.strip()]


def command(args) -> int:
    users = user_ids(args.users)
    names = [n.strip() for n in ",".join(args.name or ["ap"]).split(",") if n.strip()]
    made = make_secrets(args.out, users, names=names, days=args.days, owner=parse_owner(args.owner))
    print(f"semalign certs: {len(made)} new files in {args.out} (AP names: {', '.join(names)})")
    if not args.quiet:
        for path in made:
            print(f"  {path}")
    return 0
