"""One HTTP endpoint, declared once: the router serves it and the OpenAPI document describes it
from the same declaration (`server.web.openapi`), so neither can drift from the other.

The declaration's types do the work: a declared `body` is decoded with a decoder of that type (a
client error is 422 naming the field, over `max_body` bytes is 413), `auth` verifies the bearer
token before the handler runs, and what the handler returns is checked against the declared
responses and encoded with msgspec. A `ChatError` becomes an `ErrorBody` with its HTTP status.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.websockets import WebSocket

from protocol import codec
from protocol.api import ErrorBody, error_body
from protocol.codes import ErrorCode
from server.auth import Identity
from server.errors import ChatError, InternalError, InvalidMessage, Unauthorized
from server.services import Services

MAX_BODY_BYTES = 16_384
JSON = "application/json"
_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")
_encoder = msgspec.json.Encoder()


def services_of(request: Request | WebSocket) -> Services:
    """The process's services, built at startup."""
    services: Services = request.app.state.services
    return services


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """What a handler is given: the request, the verified reader and the decoded body."""

    request: Request
    identity: Identity | None = None
    body: Any = None  # an instance of the endpoint's `body` type

    @property
    def reader(self) -> Identity:
        """The verified reader of an `auth` endpoint."""
        if self.identity is None:
            raise InternalError("reader asked of an endpoint without auth")
        return self.identity

    @property
    def services(self) -> Services:
        """The process's services."""
        return services_of(self.request)


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A response with a status other than 200; the status must be one the endpoint declares."""

    status: int
    body: Any = None


Handler = Callable[[Call], Awaitable[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One operation of the HTTP API.

    `responses` maps each success status to the type of its body (None: no body). Error statuses
    come from `errors` (codes, via protocol/codes.py's ERRORS table), `auth` (401) and `body`
    (422, and 413 over `max_body`). The summary is the first line of the handler's docstring, the
    description the rest of it. The handler returns an instance of the 200 type, a `Reply`, or a
    ready-made Starlette `Response` (for a body that is not JSON, e.g. `text/plain`).
    """

    method: str
    path: str
    handler: Handler
    responses: Mapping[int, Any]
    auth: bool = False
    body: Any = None
    errors: tuple[ErrorCode, ...] = ()
    media_type: str = JSON
    max_body: int = MAX_BODY_BYTES

    @property
    def operation_id(self) -> str:
        """Unique per endpoint: the handler's name."""
        return self.handler.__name__

    @property
    def path_params(self) -> list[str]:
        """The names of the path's `{parameters}`."""
        return _PATH_PARAM.findall(self.path)

    @property
    def openapi_path(self) -> str:
        """The path without Starlette's `:converter` suffixes."""
        return _PATH_PARAM.sub(r"{\1}", self.path)

    def docs(self) -> tuple[str, str]:
        """Summary and description, from the handler's docstring."""
        doc = inspect.getdoc(self.handler) or self.operation_id
        summary, _, rest = doc.partition("\n")
        return summary.strip(), rest.strip()

    def error_codes(self) -> tuple[ErrorCode, ...]:
        """Every code an error response of this endpoint may carry."""
        implied: list[ErrorCode] = []
        if self.body is not None:
            implied.append(ErrorCode.INVALID_MESSAGE)
        if self.auth:
            implied += [ErrorCode.UNAUTHORIZED, ErrorCode.TOKEN_EXPIRED]
        return tuple(dict.fromkeys([*implied, *self.errors]))

    def route(self) -> Route:
        """The Starlette route that serves this endpoint."""
        decoder = msgspec.json.Decoder(self.body) if self.body is not None else None
        endpoint = self

        async def serve(request: Request) -> Response:
            try:
                identity = await _bearer(request) if endpoint.auth else None
                body = None
                if decoder is not None:
                    raw = await request.body()
                    if len(raw) > endpoint.max_body:
                        return _error(
                            InvalidMessage(f"body larger than {endpoint.max_body} bytes"), 413
                        )
                    body = _decode(decoder, raw)
                result = await endpoint.handler(Call(request, identity, body))
            except ChatError as exc:
                return error_response(exc)
            return endpoint._respond(result)

        serve.__name__ = serve.__qualname__ = self.operation_id
        return Route(self.path, serve, methods=[self.method], name=self.operation_id)

    def _respond(self, result: Any) -> Response:
        if isinstance(result, Response):
            return result
        reply = result if isinstance(result, Reply) else Reply(200, result)
        if reply.status not in self.responses:
            raise RuntimeError(f"{self.operation_id}: status {reply.status} is not declared")
        declared = self.responses[reply.status]
        if isinstance(declared, type) and not isinstance(reply.body, declared):
            raise RuntimeError(f"{self.operation_id}: {reply.status} body is not a {declared}")
        if reply.body is None:
            return Response(status_code=reply.status)
        return Response(_encoder.encode(reply.body), reply.status, media_type=self.media_type)


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidMessage(f"invalid body: {codec.readable(exc)}") from None
    except msgspec.DecodeError as exc:
        raise InvalidMessage(f"invalid body: {exc}") from None


async def _bearer(request: Request) -> Identity:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise Unauthorized("missing bearer token")
    return await services_of(request).verifier.verify(header[7:].strip())


def _body(exc: ChatError) -> ErrorBody:
    return error_body(exc.code, exc.message, exc.retryable)


def _error(exc: ChatError, status: int) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(_encoder.encode(_body(exc)), status, headers, media_type=JSON)


def error_response(exc: ChatError) -> Response:
    """The HTTP response carrying a ChatError: its code's status and an `ErrorBody`."""
    return _error(exc, exc.http_status)
