"""What the codec tests share: both codecs, and the check that a client frame is
refused as a ``ProtocolError(bad_request)``.
"""

import json
from typing import Any

import pytest

from bamboo_session.protocol import ErrorCode, ProtocolError
from bamboo_session.protocol.codec import JSON, MSGPACK, Codec

CODECS = [JSON, MSGPACK]


def bad(codec: Codec, data: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode_client(data)
    assert info.value.code is ErrorCode.BAD_REQUEST
    return info.value


def jbad(obj: Any) -> ProtocolError:
    return bad(JSON, json.dumps(obj) if not isinstance(obj, bytes) else obj)
