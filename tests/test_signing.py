"""The registry signing key: GitLab's `kid`, the key file shared by every process, the certificate."""

from __future__ import annotations

import base64
import hashlib
import multiprocessing
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import ConfigError, default_signing_key_file, parse_config
from gateway.signing import SigningKey, SigningKeyError, ensure_key_file, libtrust_kid, load_key


def test_kid_is_libtrust_key_id() -> None:
    key = SigningKey.generate()
    assert re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", key.kid)
    der = key._public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()  # 48 characters, no padding
    assert key.kid.replace(":", "") == expected
    assert libtrust_kid(key._public) == key.kid


def test_sign_and_verify() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    signature = key.sign(b"header.payload")
    assert key.verify(signature, b"header.payload")
    assert not key.verify(signature, b"header.payload2")
    assert not other.verify(signature, b"header.payload")


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobgate" / "key.pem"
    assert ensure_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = load_key(path)
    assert not ensure_key_file(path)  # never replaced
    assert load_key(path).kid == first.kid
    assert [p.name for p in path.parent.iterdir()] == ["key.pem"]  # no temporary file left


def _create(path: str) -> bool:
    return ensure_key_file(path)


def test_concurrent_creation_leaves_one_whole_key(tmp_path: Path) -> None:
    path = str(tmp_path / "key.pem")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        created = pool.map(_create, [path] * 8)
    assert created.count(True) == 1
    load_key(path)  # a whole PEM key
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_unreadable_or_foreign_key_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match=r"missing\.pem: cannot read"):
        load_key(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(SigningKeyError, match=r"junk\.pem: not an unencrypted PEM private key"):
        load_key(junk)


def test_certificate_carries_the_public_key_and_is_stable() -> None:
    key = SigningKey.generate()
    pem = key.certificate_pem()
    assert pem == key.certificate_pem()
    certificate = x509.load_pem_x509_certificate(pem.encode())
    assert libtrust_kid(certificate.public_key()) == key.kid  # type: ignore[arg-type]
    certificate.verify_directly_issued_by(certificate)  # self-signed


def test_default_key_file_is_in_a_state_directory_never_the_checkout() -> None:
    in_state_home = default_signing_key_file({"XDG_STATE_HOME": "/srv/state"})
    assert in_state_home == "/srv/state/jobgate/registry-signing-key.pem"
    default = default_signing_key_file({"HOME": "/home/u"})
    assert default in ("/var/lib/jobgate/registry-signing-key.pem",
                        "/home/u/.local/state/jobgate/registry-signing-key.pem")  # root, or not  # fmt: skip
    assert not default.startswith(str(Path(__file__).parent.parent))


def test_token_secret_is_gone_with_a_pointer_to_what_replaced_it() -> None:
    data = {"listen": "127.0.0.1:1", "upstreams": {"api": {"url": "http://127.0.0.1:2"}},
            "registry": {"token_secret": "s"}}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "gw.yaml", env={})
    assert caught.value.problems == [
        "gw.yaml: registry.token_secret: removed: registry tokens are RS256, signed with the key in "
        "registry.signing_key_file (`jobgate serve` creates it when missing; docs/operations.md)"
    ]
    data["registry"] = {"signing_key_file": "/k.pem"}
    config = parse_config(data, "gw.yaml", env={})
    assert config.registry.signing_key_file == "/k.pem" and config.registry.token_ttl <= 300
