"""The headers every answer on the WebSocket port carries, whatever writes it (a JSON
answer, a refusal of a head as it is read, a web asset, a streamed page's head, the
upgrade's 101), and :class:`AnswerHeadsProtocol`, the one place they are put in: the
protocol's ``send_response``, through which every head is written.

- ``Server: bamboo-session``, no version: websockets' own (``Python/3.11
  websockets/17.4``) told whoever asked which versions to look up flaws of.
- ``X-Content-Type-Options: nosniff``: a browser takes a JSON answer, or an error's,
  for what it says it is, never for a script or a page it guessed from the bytes (a
  session's title that looks like HTML, read as a page of this origin).
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.http11 import Response

from .subprotocols import NegotiatingProtocol

SERVER_NAME = "bamboo-session"
ANSWER_HEADERS = (("Server", SERVER_NAME), ("X-Content-Type-Options", "nosniff"))


class AnswerHeadsProtocol(NegotiatingProtocol):
    """The protocol of every connection (http_wire.py gives it this class): each head it
    writes carries :data:`ANSWER_HEADERS`, once. A class, not a method bound to each
    protocol: nothing more on an idle connection."""

    # Writes the head of an answer whose body is streamed after it, without the end of
    # stream websockets' send_response puts behind a refusal (http_answer.py).
    head_writer: Callable[[Response], None] | None = None

    def send_response(self, response: Response) -> None:
        headers = response.headers
        for name, value in ANSWER_HEADERS:
            if name not in headers:
                headers[name] = value
        if self.head_writer is not None:
            self.head_writer(response)
        else:
            super().send_response(response)
