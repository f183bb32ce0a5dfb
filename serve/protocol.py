"""OpenAI request models (only what the gateway must check) and the OpenAI error shape.

Requests are validated for the fields the gateway acts on (`model`, `messages`/`prompt`, `stream`,
`stream_options`); every other field passes through to the engine untouched (`extra="allow"`).
Errors always look like OpenAI's: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]


class DeployRequest(BaseModel):
    artifact: str
    strategy: str | None = None  # blue-green | restart | reload | auto (default: serve config)


class AdapterRequest(BaseModel):
    run: str  # a training run in the server's workspace; its adapter/ is loaded as model `name`
    name: str | None = None


class GatewayError(Exception):
    """An error the gateway answers in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def model_not_found(model: str, available: list[str]) -> GatewayError:
    have = ", ".join(available) or "none (no model deployed)"
    return GatewayError(404, f"The model '{model}' does not exist. Models served here: {have}.",
                        "invalid_request_error", "model_not_found", "model")


def unavailable(message: str) -> GatewayError:
    return GatewayError(503, message, "server_error", "engine_unavailable")
