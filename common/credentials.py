"""Per-user credentials for the alignment service.

The AP holds one secret. Each invited user id gets its own token, derived from the secret:
``token_l = HMAC-SHA256(secret, user_id)`` (hex). A user only ever sees its own token, so no
peer can take another user's id, and the AP needs to store nothing but the secret. Tokens travel
in the gRPC call metadata of the stream (``semalign-user``, ``semalign-token``), so the AP checks
them before it sends or reads anything.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

#: Call-metadata keys of the alignment stream (lower case, as gRPC requires).
USER_KEY = "semalign-user"
TOKEN_KEY = "semalign-token"

#: What a user id may look like: it is used in logs, file names and results keys.
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Shortest secret accepted (characters).
MIN_SECRET_CHARS = 16
#: Environment variable of the AP's secret (``semalign ap``, ``semalign token``).
SECRET_ENV = "SEMALIGN_SECRET"
#: File name of a secret the AP generated in its workdir.
SECRET_FILE = "ap-secret"


def new_secret() -> str:
    """A fresh random AP secret (URL-safe text, 256 bits)."""
    return secrets.token_urlsafe(32)


def check_secret(secret: str) -> str:
    """The secret if it is long enough to resist guessing; ValueError otherwise."""
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"the AP secret must have at least {MIN_SECRET_CHARS} characters")
    return secret


def check_user_id(user_id: str) -> str:
    """The user id if it is well-formed (1-64 of letters, digits, ``_.-``); ValueError otherwise."""
    if not USER_ID_PATTERN.match(user_id):
        raise ValueError(
            f"user id {user_id[:80]!r} is not 1-64 letters, digits, '_', '.' or '-' "
            "starting with a letter or digit"
        )
    return user_id


def user_token(secret: str, user_id: str) -> str:
    """The token of ``user_id`` under the AP's ``secret`` (64 hex characters)."""
    return hmac.new(secret.encode(), check_user_id(user_id).encode(), hashlib.sha256).hexdigest()


def token_is_valid(secret: str, user_id: str, token: str) -> bool:
    """Whether ``token`` is ``user_id``'s token under ``secret`` (constant-time compare)."""
    if not USER_ID_PATTERN.match(user_id) or len(token) > 256:
        return False
    return hmac.compare_digest(user_token(secret, user_id).encode(), token.encode())


def read_secret_file(path: str | Path) -> str:
    """The secret stored in ``path`` (surrounding whitespace ignored); ValueError with one line
    if it cannot be read or is too short."""
    try:
        text = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        detail = getattr(exc, "strerror", None) or "not text"
        raise ValueError(f"cannot read the AP secret {path}: {detail}") from None
    return check_secret(text)


def write_secret_file(path: str | Path, secret: str) -> Path:
    """Write ``secret`` to a new file ``path`` readable by its owner only (0600); an existing
    file is never overwritten (FileExistsError)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(check_secret(secret) + "\n")
    return path
