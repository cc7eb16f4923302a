"""Password hashing with argon2id (RFC 9106) at OWASP's recommended parameters by default
(19 MiB memory, 2 iterations, 1 lane), and a length policy per NIST SP 800-63B section 3.1.1.2.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from saas.memo import memoize

MIN_LENGTH = 8
MAX_LENGTH = 256


class Passwords:
    """Hash, verify and rehash passwords. Parameters come from settings (memory in KiB)."""

    def __init__(self, memory_kib: int = 19 * 1024, time_cost: int = 2, parallelism: int = 1):
        self._hasher = PasswordHasher(memory_cost=memory_kib, time_cost=time_cost, parallelism=parallelism)
        # a real hash to verify against when the account does not exist (equal timing, no enumeration)
        self._dummy = self._hasher.hash("dummy password for timing equality")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored``; with ``stored`` None, spends the same time and
        returns False."""
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)


@memoize("identity.common_passwords", maxsize=1)
def _common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords of zxcvbn's list (from leaked password corpora)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def is_common_password(password: str) -> bool:
    """True when ``password`` (case-insensitively, surrounding spaces ignored) is on the common
    passwords list, or is one character repeated."""
    folded = password.strip().lower()
    return folded in _common_passwords() or len(set(folded)) <= 1


def password_problems(password: str, min_length: int = MIN_LENGTH) -> list[str]:
    """Reasons ``password`` is refused (empty when acceptable), per NIST SP 800-63B section
    3.1.1.2: at least ``min_length`` (8, or the tenant's higher policy) and at most 256
    characters, not a commonly used or breached password; no composition rules."""
    problems = []
    if len(password) < min_length:
        problems.append(f"Must be at least {min_length} characters.")
    if len(password) > MAX_LENGTH:
        problems.append(f"Must be at most {MAX_LENGTH} characters.")
    if not problems and is_common_password(password):
        problems.append("This password is too common (it appears in lists of breached passwords).")
    return problems
