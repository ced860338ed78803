"""What an HTTP answer (one that does not become a WebSocket) is let out as: the
answer itself, charged to its peer's share of the unread answers
(server/unread_answers.py), or the refusal that takes its place when that share, or
the server's, cannot hold it. ``BambooServer``'s request gate
(server/request_gate.py) calls :func:`admit_answer` once the answer is decided, and
charges the page it carries to the peer's read allowance whatever became of it.
"""

from __future__ import annotations

from websockets.http11 import Request, Response

from .config import ServerConfig
from .http_peer import HttpPeer
from .http_wire import BambooConnection
from .responses import StreamedResponse
from .unread_answers import SMALL_ANSWER_BYTES, UnreadAnswers, is_charged


def admit_answer(
    answers: UnreadAnswers,
    config: ServerConfig,
    connection: BambooConnection,
    request: Request,
    peer: HttpPeer,
    response: Response,
) -> tuple[Response, int]:
    """The answer to send for ``request`` and the page it carries: a body, or the
    first piece of a streamed answer (its later pieces are charged as they are read).
    The peer's key is asked only of an answer charged (it may verify a token)."""
    streamed = isinstance(response, StreamedResponse)
    page = response.held if isinstance(response, StreamedResponse) else len(response.body)
    if isinstance(response, StreamedResponse) and request.protocol != "HTTP/1.1":
        # No Transfer-Encoding in an answer to HTTP/1.0 (RFC 9112 6.1): its body
        # ends with the connection, and one cut short lacks its closing "]}".
        del response.headers["Transfer-Encoding"]
        response.chunked = False
    if request.method == "HEAD" and (response.body or streamed):
        # The same status and headers as a GET, without the body (RFC 9110 9.3.2):
        # refused as the GET would be for the bytes it would hold, nothing charged
        # and no room made (the answer holds none), so that a HEAD says what its
        # GET would get, and reads no page a GET would be refused before.
        if page > SMALL_ANSWER_BYTES:
            share = answers.share(peer.key)
            response = share.refusal(page, make_room=False) or response
        response = Response(response.status_code, response.reason_phrase, response.headers, b"")
    elif isinstance(response, StreamedResponse) and response.pieces is not None:
        # Its body follows its head, a piece at a time, each charged from its read
        # on; its first piece, read already, is charged now, or refused as any
        # answer that does not fit.
        share = answers.share(peer.key)
        refusal = share.refusal(response.held)
        if refusal is None:
            share.charge(response.held)
            page_timeout, close_timeout = config.answer_page_timeout, config.close_timeout
            connection.stream_answer(share, response, page_timeout, close_timeout)
        else:
            response = refusal
    elif is_charged(connection, response):
        response = answers.share(peer.key).admit(connection, response)
    return response, page
