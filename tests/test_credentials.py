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


def test_flower_binding_gives_each_id_to_one_node_only():
    """The ServerApp's binding: the first SuperNode to claim an invited id gets its token;
    a second claim, an id not invited, a malformed id or one user too many are refused."""
    from semalign.deploy.flower.app.serverapp import Binding

    binding = Binding(["user1", "user2"], users=2)
    assert binding.claim(11, "user1") is None
    assert "already run by node 11" in binding.claim(12, "user1")
    assert "not invited" in binding.claim(13, "user3")
    assert "is not 1-64" in binding.claim(14, "../x")
    assert binding.claim(15, "user2") is None
    assert binding.nodes == {"user1": 11, "user2": 15}
    anyone = Binding([], users=1)  # `semalign ap --users 1`: any id, one of them
    assert anyone.claim(1, "alice") is None
    assert "already 1 users" in anyone.claim(2, "bob")


def test_secret_files_are_private_and_never_overwritten(tmp_path):
    import os
    import stat

    from semalign.common.credentials import read_secret_file, write_secret_file

    secret = new_secret()
    path = write_secret_file(tmp_path / "s", secret)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_secret_file(path) == secret
    with pytest.raises(FileExistsError):
        write_secret_file(path, new_secret())
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ValueError, match="at least"):
        read_secret_file(tmp_path / "short")
    with pytest.raises(ValueError, match="cannot read"):
        read_secret_file(tmp_path / "missing")
