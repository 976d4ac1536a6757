"""One error body for every refusal: {"error": "<sentence>", "code": "<stable_code>"}."""
from __future__ import annotations

from starlette.responses import JSONResponse


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "code": self.code}, status_code=self.status)
