import pytest
from semalign.common.credentials import (
    check_secret,
    check_user_id,
    new_secret,
    token_is_valid,
    user_token,
)


def test_each_user_has_its_own_token():
    secret = new_secret()
    a, b = user_token(secret, "user1"), user_token(secret, "user2")
    assert a != b and len(a) == 64
    assert token_is_valid(secret, "user1", a)
    assert not token_is_valid(secret, "user2", a)  # user1's token does not open user2's id
    assert not token_is_valid(new_secret(), "user1", a)  # nor another AP's session
    assert not token_is_valid(secret, "user1", a[:-1] + ("0" if a[-1] != "0" else "1"))


def test_malformed_ids_tokens_and_secrets_are_refused():
    secret = new_secret()
    for bad in ("", "-x", "a b", "x" * 65, "ü", "../etc"):
        with pytest.raises(ValueError):
            check_user_id(bad)
        assert not token_is_valid(secret, bad, "0" * 64)
    assert not token_is_valid(secret, "user1", "0" * 10_000)
    with pytest.raises(ValueError, match="at least"):
        check_secret("short")
    assert check_secret(secret) == secret
