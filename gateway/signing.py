"""The registry signing key: RS256 signatures with GitLab's `kid`, one key file for every process.

`jobgate serve` creates the key file before it forks when it does not exist, so every
worker (and every replica that mounts the same file) signs with the same key; a registry
that verifies tokens itself trusts `certificate_pem()` (its `rootcertbundle`). The key
lives only in that file and in memory: never in Redis, never in a log.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

KEY_BITS = 2048
KEY_FILE_MODE = 0o600
CERTIFICATE_NAME = "jobgate registry token signer"


class SigningKeyError(Exception):
    """The key file cannot be read, parsed or created; the message names the file."""


def libtrust_kid(public_key: rsa.RSAPublicKey) -> str:
    """docker-registry's (libtrust) key id: SHA-256 of the public key's DER (SubjectPublicKeyInfo),
    its first 30 bytes base32-encoded, a colon after every 4 characters (GitLab's `kid`)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class SigningKey:
    """An RSA private key that signs registry tokens (RS256) and verifies them."""

    def __init__(self, private_key: rsa.RSAPrivateKey, path: str = "<memory>") -> None:
        self._private = private_key
        self._public = private_key.public_key()
        self.path = path
        self.kid = libtrust_kid(self._public)

    def __repr__(self) -> str:
        return f"SigningKey(path={self.path!r}, kid={self.kid!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key that lives in memory only (tests, tools)."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS))

    def sign(self, data: bytes) -> bytes:
        """The RS256 signature (RSASSA-PKCS1-v1_5 with SHA-256) of `data`."""
        return self._private.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when `signature` is this key's RS256 signature of `data`."""
        try:
            self._public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def certificate_pem(self) -> str:
        """A self-signed X.509 certificate of the public key, in PEM: what a registry trusts.

        It is the same text every time for one key (serial from the key, fixed validity,
        deterministic PKCS#1 v1.5 signature), so printing it twice gives one bundle.
        """
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERTIFICATE_NAME)])
        der = self._public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        serial = int.from_bytes(hashlib.sha256(der).digest()[:16], "big") >> 1 or 1
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._public)
            .serial_number(serial)
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._private, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode()


def load_key(path: str | os.PathLike[str]) -> SigningKey:
    """The key in the PEM file at `path`; SigningKeyError names the file and the problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the registry signing key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningKeyError(f"{path}: expected an RSA private key (RS256), got {type(key).__name__}")
    return SigningKey(key, str(path))


def ensure_key_file(path: str | os.PathLike[str]) -> bool:
    """Create the key file (mode 0600) unless it exists; True when this call created it.

    The key is written to a temporary file in the same directory and then linked into
    place, which fails when the name exists: two processes starting at once never
    half-write the file nor replace each other's key, and the loser keeps the winner's.
    """
    target = Path(path)
    if target.exists():
        return False
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SigningKeyError(f"{target.parent}: cannot create the key directory: {exc.strerror}") from None
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, target)
    except FileExistsError:
        return False  # another process created it first: everyone uses that one
    except OSError as exc:
        raise SigningKeyError(f"{target}: cannot create the registry signing key: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return True


def load_or_create_key(path: str | os.PathLike[str]) -> SigningKey:
    """The key at `path`, created first when missing (`serve` creates it before forking)."""
    ensure_key_file(path)
    return load_key(path)
