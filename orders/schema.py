"""The OpenAPI schema (drf-spectacular), made to say what the API really does: every status an operation can answer,
those of the layers in front of the view included, which operations anonymous callers may use, and no sandbox
endpoints with ORDERPIPE_SANDBOX=false (docs/10-design-notes.md, "The OpenAPI schema").
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ERROR = inline_serializer(
    "Error", fields={"detail": serializers.CharField(), "code": serializers.CharField(required=False)}
)
FIELD_ERRORS = OpenApiResponse(OpenApiTypes.OBJECT, description="Field errors: {field: [messages]}")
BODY_METHODS = {"POST", "PUT", "PATCH"}


def error_responses(*, method: str, has_path_parameters: bool) -> dict[int, Any]:
    """The statuses an operation may answer whatever its view does."""
    responses: dict[int, Any] = {
        403: OpenApiResponse(
            ERROR, description="Not allowed (see the README's Security table), or a failed CSRF check."
        ),
        414: OpenApiResponse(description="The request line is longer than the server takes (gunicorn)."),
        429: OpenApiResponse(ERROR, description="Throttled; `Retry-After` says when to come back."),
        503: OpenApiResponse(ERROR, description="The database is unavailable; nothing was stored."),
    }
    if has_path_parameters:
        responses[404] = OpenApiResponse(ERROR, description="No such object (an unknown or malformed id).")
    if method in BODY_METHODS:
        responses |= {
            400: FIELD_ERRORS,
            411: OpenApiResponse(ERROR, description="A chunked body: send a Content-Length."),
            413: OpenApiResponse(ERROR, description="The body is over the upload limit."),
            415: OpenApiResponse(ERROR, description="The body is not JSON."),
        }
    return responses


class AutoSchema(SpectacularAutoSchema):
    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        # Below @extend_schema(responses=...), which overrides get_response_serializers.
        responses = super()._get_response_bodies(direction)  # type: ignore[arg-type]
        common = error_responses(method=self.method, has_path_parameters="{" in self.path)
        for code, response in common.items():
            if str(code) not in responses:  # what the view says about a status wins
                responses[str(code)] = self._get_response_for_code(response, str(code), direction=direction)
        return dict(sorted(responses.items()))

    def _map_serializer_field(self, field: Any, direction: str, bypass_extensions: bool = False) -> Any:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if isinstance(field, serializers.ListSerializer) and isinstance(schema, dict):
            # drf-spectacular leaves out a nested list's length limits (`many=True, allow_empty=False, max_length=`).
            # (The stubs do not declare min_length and max_length.)
            min_length, max_length = getattr(field, "min_length", None), getattr(field, "max_length", None)
            if min_length is None:
                min_length = 0 if field.allow_empty else 1
            if min_length:
                schema["minItems"] = min_length
            if max_length is not None:
                schema["maxItems"] = max_length
        return schema

    def get_auth(self) -> list[dict[str, list[Any]]]:
        auths = super().get_auth()
        permissions = self.view.get_permissions()
        if permissions and all(allows_anonymous(p, self.method) for p in permissions) and {} not in auths:
            auths.append({})
        return auths


def allows_anonymous(permission: object, method: str) -> bool:
    check = getattr(permission, "allows_anonymous", None)
    return bool(check and check(method))


def is_sandbox_only(view: Any) -> bool:
    return any(getattr(permission, "sandbox_only", False) for permission in getattr(view, "permission_classes", ()))


def is_listed(view: Any) -> bool:
    """Whether an endpoint is listed (API root, schema): a sandbox endpoint only while the sandbox is on."""
    return settings.ORDERPIPE_SANDBOX or not is_sandbox_only(view)


def drop_sandbox_endpoints(endpoints: list[tuple[str, str, str, Any]]) -> list[tuple[str, str, str, Any]]:
    """drf-spectacular's PREPROCESSING_HOOKS: the sandbox's endpoints are in the schema only while it is on."""
    if settings.ORDERPIPE_SANDBOX:
        return endpoints
    return [endpoint for endpoint in endpoints if not is_sandbox_only(getattr(endpoint[3], "cls", None))]
