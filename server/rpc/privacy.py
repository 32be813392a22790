"""Pseudonymous user ids: with a key configured, every user id is replaced by a keyed
hash (HMAC-SHA256, 128 bits, hex) at the API boundary, before anything is stored or
logged. The same customer always maps to the same pseudonym, so state, decisions and
risk baselines work unchanged; the raw id never reaches LMDB. Callers keep sending raw
ids (GetUser with a raw id finds the user); replies that carry a user id (GetUser,
deliveries) carry the pseudonym, which channel adapters map back on their side.
"""

from __future__ import annotations

import hashlib
import hmac

CACHE = 100_000


class Pseudonyms:
    def __init__(self, key: str | None) -> None:
        self._key = key.encode() if key else None
        self._cache: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def __call__(self, user_id: str) -> str:
        if self._key is None:
            return user_id
        pseudonym = self._cache.get(user_id)
        if pseudonym is None:
            digest = hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()
            pseudonym = f"p_{digest[:32]}"
            if len(self._cache) >= CACHE:
                self._cache.clear()
            self._cache[user_id] = pseudonym
        return pseudonym
