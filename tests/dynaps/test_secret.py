"""The job secret: loaded from the environment or a file, refused when unusable, keys per purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynaps.contract import secret


def test_loads_from_the_environment_first_then_the_file(tmp_path: Path) -> None:
    a, b = secret.new_secret(), secret.new_secret()
    path = tmp_path / "secret"
    path.write_text(secret.encode(b) + "\n")  # a mounted file may end with a newline
    assert secret.load_secret({secret.HEX_ENV: secret.encode(a), secret.FILE_ENV: str(path)}) == a
    assert secret.load_secret({secret.FILE_ENV: str(path)}) == b


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "no job secret"),
        ({secret.HEX_ENV: "zz"}, "not hexadecimal"),
        ({secret.HEX_ENV: "ab" * 8}, "at least 32"),
        ({secret.FILE_ENV: "/nonexistent/secret"}, "cannot read"),
    ],
)
def test_an_unusable_secret_is_refused_with_the_reason(environ: dict[str, str], message: str) -> None:
    with pytest.raises(secret.SecretError, match=message):
        secret.load_secret(environ)


def test_each_purpose_gets_its_own_key_and_each_job_its_own() -> None:
    a, b = secret.new_secret(), secret.new_secret()
    assert secret.wire_key(a) != secret.wire_key(b)
    assert secret.wire_key(a) != bytes.fromhex(secret.http_token(a))
    assert secret.wire_key(a) == secret.wire_key(a)
    assert len(secret.http_token(a)) == 64
