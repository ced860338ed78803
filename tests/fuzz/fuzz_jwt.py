"""atheris harness: the JWT reader (server/auth.py ``Authenticator.verify``).

Two kinds of token: the fuzzed bytes as the token itself (what anyone can send), and
fuzzed header and claims JSON signed with the server's secret (what a careless issuer
could mint). Either way ``verify`` raises ``Unauthorized`` and nothing else (an escape
is a traceback where a 401 or close 4401 belongs), and a principal it returns holds a
non-empty ``sub``, a known role, a valid ``sid`` if any, and an ``exp`` not yet past.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import atheris
from harness import run

with atheris.instrument_imports(include=["bamboo_session", "jwt"]):
    from bamboo_session.protocol.ids import is_valid_session_id
    from bamboo_session.server.auth import Authenticator, Role, Unauthorized

SECRET = "s" * 32
AUTHENTICATORS = (
    Authenticator(SECRET),
    Authenticator(SECRET, leeway=0, audience="bamboo", issuer="issuer"),
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: bytes, claims: bytes) -> str:
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def check(token: str) -> None:
    for authenticator in AUTHENTICATORS:
        try:
            principal = authenticator.verify(token)
        except Unauthorized:
            continue
        assert isinstance(principal.sub, str) and principal.sub, principal
        assert principal.role in tuple(Role), principal
        assert principal.sid is None or is_valid_session_id(principal.sid), principal
        assert principal.valid_until is not None and principal.valid_until > time.time() - 60


def one_input(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    if data[0] % 2 == 0:
        check(body.decode("utf-8", "replace"))
        return
    header, _, claims = body.partition(b"\x00")
    check(signed(header, claims))


def _seeds() -> list[bytes]:
    header = b'{"alg":"HS256","typ":"JWT"}'
    claims = [
        b'{"sub":"u","exp":99999999999}',
        b'{"sub":"u","exp":99999999999.5,"role":"agent","sid":"s-1","nbf":1,"iat":2}',
        b'{"sub":"a","exp":99999999999,"role":"admin","aud":"bamboo","iss":"issuer"}',
        b'{"sub":"a","exp":99999999999,"aud":["x","bamboo"],"iss":"issuer"}',
    ]
    seeds = [b"\x01" + header + b"\x00" + claim for claim in claims]
    seeds += [b"\x00" + signed(header, claim).encode() for claim in claims]
    seeds.append(b"\x00eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.")
    return seeds


if __name__ == "__main__":
    words = ['"alg"', '"HS256"', '"none"', '"typ"', '"kid"', '"crit"', '"b64"', '"jku"']
    words += ['"sub"', '"exp"', '"nbf"', '"iat"', '"aud"', '"iss"', '"role"', '"sid"', '"jti"']
    words += ["1e999", "-1e999", "NaN", "Infinity", "99999999999999999999999", "[]", "{}", "."]
    run("jwt", one_input, _seeds(), words)
