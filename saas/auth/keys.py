"""Signing keys for JWTs: PEM files in a key directory, newest active, all published in JWKS.

Key ids are RFC 7638 thumbprints. With no key configured, one is generated on first use under
``<var_dir>/keys`` (a file lock keeps concurrent workers from generating two).
"""

from __future__ import annotations

import calendar
import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

AnyKey = RSAKey | ECKey

#: the creation stamp ``KeyStore.add_key`` puts in front of a key file's name (UTC, microseconds)
_STAMP = re.compile(r"(\d{8}T\d{6})\.(\d{6})-")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    key: AnyKey
    #: when the key was made, seconds since the epoch (see :func:`_created`)
    created: float
    path: Path | None = None


def _created(path: Path) -> float:
    """When the key in ``path`` was made: the stamp in its name, written by
    :meth:`KeyStore.add_key` with the clock that issues and checks tokens; the file's modification
    time only for a file named otherwise (a copy or a restore resets that time)."""
    match = _STAMP.match(path.name)
    if match is None:
        return path.stat().st_mtime
    return calendar.timegm(time.strptime(match[1], "%Y%m%dT%H%M%S")) + int(match[2]) / 1e6


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

    def __init__(
        self, path: Path, alg: str = "RS256", generate: bool = True, max_token_age: float | None = None
    ):
        """``max_token_age`` (seconds, access-token lifetime plus leeway): a superseded key stops
        being published and accepted that long after its successor appeared, even before
        ``saas keys rotate`` moves it to ``retired/``. None keeps every key."""
        self.path = path
        self.max_token_age = max_token_age
        self.alg = alg
        self.generate = generate
        self._keys: list[SigningKey] = []
        self._loaded_at = 0.0
        self._dir_mtime = 0.0
        self.reload()

    #: how often (seconds) a worker looks for keys added or retired by ``saas keys rotate``
    RELOAD_INTERVAL = 10.0

    def _maybe_reload(self, force: bool = False) -> None:
        """Reload when the key directory changed; checked at most every ``RELOAD_INTERVAL`` s
        (or at once when ``force`` and the last load is older than one second)."""
        now = time.monotonic()
        interval = 1.0 if force else self.RELOAD_INTERVAL
        if now - self._loaded_at < interval or not self.path.is_dir():
            return
        self._loaded_at = now
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return
        if mtime != self._dir_mtime:
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
            keys.append(SigningKey(kid, _alg_for(key), key, _created(file), file))
        if not keys:
            raise RuntimeError(f"no signing key found at {self.path}")
        keys.sort(key=lambda k: (k.path.name if k.path else "", k.created))
        self._keys = keys
        self._loaded_at = time.monotonic()
        if self.path.is_dir():
            self._dir_mtime = self.path.stat().st_mtime

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
        # names sort in creation order (microseconds; the newest file is the active key)
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}"
        name = f"{stamp}-{key.thumbprint()[:12]}.pem"
        target = self.path / name
        tmp = self.path / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.as_pem(private=True))
        os.replace(tmp, target)
        return target

    def retire(self, max_token_age: float, now: float | None = None) -> list[SigningKey]:
        """Move superseded keys whose successor is older than ``max_token_age`` seconds (so every
        token they signed has expired) to ``retired/``; they leave JWKS. Returns the retired keys.

        The active key is never retired."""
        if not self.path.is_dir():
            return []
        now = time.time() if now is None else now
        retired = []
        for older, newer in zip(self._keys, self._keys[1:], strict=False):
            if older.path is not None and now - newer.created > max_token_age:
                target_dir = self.path / "retired"
                target_dir.mkdir(mode=0o700, exist_ok=True)
                os.replace(older.path, target_dir / older.path.name)
                retired.append(older)
        if retired:
            self.reload()
        return retired

    @property
    def active(self) -> SigningKey:
        self._maybe_reload()
        return self._keys[-1]

    def _live(self) -> list[SigningKey]:
        """The keys that may still have signed an unexpired token (the active one always)."""
        if self.max_token_age is None:
            return list(self._keys)
        now = time.time()
        live = [
            older
            for older, newer in zip(self._keys, self._keys[1:], strict=False)
            if now - newer.created <= self.max_token_age
        ]
        return [*live, self._keys[-1]]

    @property
    def keys(self) -> list[SigningKey]:
        return self._live()

    def key_set(self) -> KeySet:
        return KeySet([k.key for k in self._live()])

    def find(self, kid: str) -> SigningKey | None:
        """The key with this ``kid``; an unknown kid triggers one reload (at most once a second)."""
        for attempt in (0, 1):
            for key in self._live():
                if key.kid == kid:
                    return key
            if attempt == 0:
                self._maybe_reload(force=True)
        return None

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 section 5): ``{"keys": [{kty, kid, use, alg, n, e}...]}``.

        Every key not yet retired is published (the active one last), so tokens signed by a
        rotated-out key still verify until they expire."""
        self._maybe_reload()
        out = []
        for k in self._live():
            jwk = k.key.as_dict(private=False)
            jwk.update({"kid": k.kid, "use": "sig", "alg": k.alg})
            out.append(jwk)
        return {"keys": out}
