"""The AWS errors the emulator answers with, in the shape botocore turns into ``ClientError``."""

from __future__ import annotations


class ApiError(Exception):
    """
    An error answered to the client as an AWS JSON 1.1 error body.

    :param code: the AWS error code (``__type``), e.g. ``ValidationException``.
    :param message: the human-readable message.
    :param status: the HTTP status code.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def validation_error(message: str) -> ApiError:
    """:param message: what is wrong with the request."""
    return ApiError("ValidationException", message)


def not_found(message: str) -> ApiError:
    """:param message: which resource is missing."""
    return ApiError("ResourceNotFound", message)
