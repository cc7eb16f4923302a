"""Signing keys for JWTs: PEM files in a key directory, newest active, all published in JWKS.

Key ids are RFC 7638 thumbprints. With no key configured, one is generated on first use under
``<var_dir>/keys`` (a file lock keeps concurrent workers from generating two).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

AnyKey = RSAKey | ECKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    key: AnyKey
    created: float
    path: Path | None = None


def _alg_for(key: AnyKey) -> str:
    return "ES256" if isinstance(key, ECKey) else "RS256"


def _load_pem(path: Path) -> AnyKey:
    data = path.read_bytes()
    try:
        return RSAKey.import_key(data)
    except Exception:
        return ECKey.import_key(data)


class KeyStore:
    """The process's signing keys, loaded from ``path`` (a PEM file or a directory of them)."""

    def __init__(self, path: Path, alg: str = "RS256", generate: bool = True):
        self.path = path
        self.alg = alg
        self.generate = generate
        self._keys: list[SigningKey] = []
        self.reload()

    def reload(self) -> None:
        """Read the keys again (after ``saas keys rotate``)."""
        if self.path.is_file():
            files = [self.path]
        else:
            if not self.path.exists() and self.generate:
                self.path.mkdir(parents=True, exist_ok=True)
            files = sorted(self.path.glob("*.pem")) if self.path.is_dir() else []
            if not files and self.generate:
                files = [self._generate_locked()]
        keys = []
        for file in files:
            key = _load_pem(file)
            kid = key.thumbprint()
            keys.append(SigningKey(kid, _alg_for(key), key, file.stat().st_mtime, file))
        if not keys:
            raise RuntimeError(f"no signing key found at {self.path}")
        keys.sort(key=lambda k: (k.path.name if k.path else "", k.created))
        self._keys = keys

    def _generate_locked(self) -> Path:
        lock_path = self.path / ".lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            existing = sorted(self.path.glob("*.pem"))
            if existing:
                return existing[-1]
            return self.add_key()

    def add_key(self) -> Path:
        """Generate a new key file (it becomes the active key) and return its path."""
        key: AnyKey = ECKey.generate_key("P-256") if self.alg == "ES256" else RSAKey.generate_key(2048)
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{key.thumbprint()[:12]}.pem"
        target = self.path / name
        tmp = self.path / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.as_pem(private=True))
        os.replace(tmp, target)
        return target

    @property
    def active(self) -> SigningKey:
        return self._keys[-1]

    @property
    def keys(self) -> list[SigningKey]:
        return list(self._keys)

    def key_set(self) -> KeySet:
        return KeySet([k.key for k in self._keys])

    def find(self, kid: str) -> SigningKey | None:
        for key in self._keys:
            if key.kid == kid:
                return key
        return None

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 section 5): ``{"keys": [{kty, kid, use, alg, n, e}...]}``."""
        out = []
        for k in self._keys:
            jwk = k.key.as_dict(private=False)
            jwk.update({"kid": k.kid, "use": "sig", "alg": k.alg})
            out.append(jwk)
        return {"keys": out}
