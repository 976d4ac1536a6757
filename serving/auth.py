"""Optional API keys (CIFAR10_API_KEYS): every model endpoint then wants `Authorization: Bearer <key>`.

Keys are compared as SHA-256 digests with hmac.compare_digest, against every accepted key without stopping at a
match, so neither a key's length nor which key matched shows in the time an answer takes. Neither the presented
header nor the keys are ever logged (Settings keeps them out of its repr too).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Optional, Sequence

from .errors import RequestError


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    def __init__(self, keys: Sequence[str]):
        if not keys:
            raise ValueError("ApiKeys needs at least one key")
        self._digests = [_digest(k) for k in keys]

    def check(self, authorization: Optional[str]) -> None:
        """Pass for `Bearer <an accepted key>`; otherwise raise the 401 `unauthorized` answer."""
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise RequestError(401, "unauthorized", "this service needs an API key: send the header "
                               "'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})
        digest = _digest(presented.strip())
        matched = False
        for accepted in self._digests:
            matched |= hmac.compare_digest(digest, accepted)
        if not matched:
            raise RequestError(401, "unauthorized", "the API key is not one this service accepts",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
