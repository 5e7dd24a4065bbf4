"""OpenAI-style error objects: `{"error": {"message", "type", "param", "code"}}` with a status."""
from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

# OpenAI's error types by status.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
          502: "upstream_error", 503: "server_error", 504: "timeout_error"}


class APIError(Exception):
    """An error answered to the client; `code` is machine-readable (e.g. `limit_max_tokens`)."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, code=code, param=param)


def internal_error() -> APIError:
    """The answer to a bug on the server's side (its traceback goes to the server's log)."""
    return APIError(500, "the server failed on this request (an internal error, logged on the "
                    "server); please report it", code="internal_error")
