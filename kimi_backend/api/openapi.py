"""`GET /api/openapi.json`: the OpenAPI 3.1 document of every route the app has, built from
the URL map and the request schemas the views validate with (`schemas.validated`), and
`GET /api/docs`, the same document as a plain HTML page (no CDN, no script). The endpoint
list of `/api/info` comes from the same URL map (`listed_endpoints`)."""
from __future__ import annotations

import re
from typing import Callable

from flask import Blueprint, Flask, current_app, jsonify, render_template_string
from pydantic.json_schema import models_json_schema

from ..version import __version__
from ..admin import ADMIN_HEADER, require_admin_key
from ..auth import require_client_key
from ..model_policy import DROPPED_HEADER
from ..service import dropped_params_header

bp = Blueprint("openapi", __name__, url_prefix="/api")

_PARAM = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_REF = "#/components/schemas/{model}"
ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error, from every layer.",
    "required": ["success", "error", "code"],
    "properties": {
        "success": {"const": False},
        "error": {"type": "string", "description": "What happened and what to do."},
        "code": {"type": "string", "description": "Machine code, e.g. invalid_request, rate_limited."},
        "request_id": {"type": "string", "description": "Also in the X-Request-ID header and the logs."},
    },
}
SUCCESS_SCHEMA = {"type": "object", "required": ["success"], "properties": {"success": {"const": True}}}
OPENAI_ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error on the OpenAI-compatible surface (/v1), in OpenAI's shape.",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"},
        "request_id": {"type": "string"}}}},
}
OPENAI_SUCCESS = {"application/json": {"schema": {"type": "object", "description": "OpenAI's response object."}},
                  # With stream: true. No schema: tools that check responses would read each SSE
                  # event (an object of `data`, `event`, ...) against it.
                  "text/event-stream": {}}
DROPPED_PARAMS = {"description": "The sampling parameters dropped because the model fixes them (e.g. "
                                 "`temperature, top_p`): why a value had no effect. Absent when none were.",
                  "schema": {"type": "string"}}


def produces(media_type: str) -> Callable:
    """Marks a view whose success response is not JSON, for the document."""
    def mark(view: Callable) -> Callable:
        view.response_media_type = media_type
        return view
    return mark


def listed(description: str) -> Callable:
    """Lists a view in `/api/info`'s endpoints, with a one-line description for a frontend."""
    def mark(view: Callable) -> Callable:
        view.listed_as = description
        return view
    return mark


def listed_endpoints(app: Flask) -> list[dict]:
    """`/api/info`'s endpoints: the URL map's listed views, in the order they were registered."""
    endpoints = []
    for rule in app.url_map.iter_rules():
        description = getattr(app.view_functions[rule.endpoint], "listed_as", None)
        if description is not None:
            endpoints += [{"method": method, "path": _path(rule), "description": description}
                          for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return endpoints


def _path(rule) -> str:
    """The rule's path in OpenAPI's form: `<subject>` becomes `{subject}`."""
    return _PARAM.sub(r"{\1}", rule.rule)


def build_document(app: Flask) -> dict:
    """The OpenAPI 3.1 document of `app`'s URL map."""
    views = {rule.endpoint: app.view_functions[rule.endpoint] for rule in app.url_map.iter_rules()}
    models = sorted({view.request_schema for view in views.values() if hasattr(view, "request_schema")},
                    key=lambda model: model.__name__)
    _, defs = models_json_schema([(model, "validation") for model in models], ref_template=_REF)
    schemas = dict(defs.get("$defs", {}), Error=ERROR_SCHEMA, Success=SUCCESS_SCHEMA, OpenAIError=OPENAI_ERROR_SCHEMA)
    paths: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        path = _path(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(app, rule, method, views[rule.endpoint])
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kimi Backend", "version": __version__,
                 "description": "A safe backend between web frontends and Moonshot AI's Kimi chat API."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                                "BearerKey": {"type": "http", "scheme": "bearer"},
                                "AdminKey": {"type": "apiKey", "in": "header", "name": ADMIN_HEADER}},
        },
    }


def _operation(app: Flask, rule, method: str, view: Callable) -> dict:
    doc = (view.__doc__ or rule.endpoint).strip()
    media_type = getattr(view, "response_media_type", None)
    if rule.endpoint == "static":
        media_type = "application/octet-stream"
    openai = rule.rule.startswith("/v1/")
    if openai:
        success = {"description": doc.splitlines()[0], "content": OPENAI_SUCCESS}
    elif media_type:
        success = {"description": doc.splitlines()[0], "content": {media_type: {}}}
    else:
        success = {"description": doc.splitlines()[0],
                   "content": {"application/json": {"schema": {"$ref": _REF.format(model="Success")}}}}
    error = {"description": "An error (see `code`).", "content": {"application/json": {
        "schema": {"$ref": _REF.format(model="OpenAIError" if openai else "Error")}}}}
    operation = {
        "operationId": f"{rule.endpoint.replace('.', '_')}_{method.lower()}",
        "summary": doc.splitlines()[0],
        "tags": [rule.endpoint.split(".")[0] if "." in rule.endpoint else "app"],
        "responses": {"200": success, "default": error},
    }
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _PARAM.findall(rule.rule)]
    query = getattr(view, "query_schema", None)  # a pydantic model of the query string
    if query is not None:
        properties = query.model_json_schema(by_alias=True)
        for name, field in properties["properties"].items():
            field = dict(field)
            parameters.append({"name": name, "in": "query", "required": name in properties.get("required", ()),
                               "description": field.pop("description", ""), "schema": field})
    if parameters:
        operation["parameters"] = parameters
    schema = getattr(view, "request_schema", None)
    if schema is not None:
        # A view that reads an empty body as `{}` (its fields all optional) marks itself.
        operation["requestBody"] = {"required": not getattr(view, "empty_body_allowed", False), "content": {
            "application/json": {"schema": {"$ref": _REF.format(model=schema.__name__)}}}}
    blueprint = rule.endpoint.rpartition(".")[0]
    if dropped_params_header in app.after_request_funcs.get(blueprint, ()) and method == "POST":
        success["headers"] = {DROPPED_HEADER: DROPPED_PARAMS}
    if app.config["SETTINGS"].require_api_key and require_client_key in app.before_request_funcs.get(blueprint, ()):
        operation["security"] = [{"ApiKeyHeader": []}, {"BearerKey": []}]
    if require_admin_key in app.before_request_funcs.get(blueprint, ()):
        operation["security"] = [{"AdminKey": []}]
    return operation


def document() -> dict:
    """The current app's document, built once (routes do not change after startup)."""
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = build_document(current_app)
    return current_app.extensions["openapi"]


@bp.get("/openapi.json")
@listed("OpenAPI 3.1 document of every route")
@produces("application/json")
def openapi_json():
    """The OpenAPI 3.1 document of every route."""
    return jsonify(document())


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ doc.info.title }} API</title></head>
<body><h1>{{ doc.info.title }} {{ doc.info.version }}</h1><p>{{ doc.info.description }}
Machine-readable: <a href="/api/openapi.json">/api/openapi.json</a>.</p>
{% for path, operations in doc.paths.items() %}{% for method, op in operations.items() %}
<h2><code>{{ method.upper() }} {{ path }}</code></h2><p>{{ op.summary }}{% if op.security == [{"AdminKey": []}] %}
(needs the admin key, x-admin-key){% elif op.security %} (needs a client key when REQUIRE_API_KEY is on){% endif %}</p>
{% set body = op.requestBody and op.requestBody.content["application/json"].schema["$ref"].rpartition("/")[2] %}
{% if body %}<table border="1"><tr><th>field</th><th>required</th><th>schema</th><th>description</th></tr>
{% for name, field in doc.components.schemas[body].properties.items() %}<tr><td><code>{{ name }}</code></td>
<td>{{ "yes" if name in doc.components.schemas[body].get("required", []) else "no" }}</td>
<td><code>{{ field | tojson }}</code></td><td>{{ field.description }}</td></tr>{% endfor %}</table>{% endif %}
{% endfor %}{% endfor %}</body></html>
"""


@bp.get("/docs")
@listed("The OpenAPI document as a page")
@produces("text/html")
def docs():
    """The OpenAPI document as a readable HTML page."""
    return render_template_string(DOCS_PAGE, doc=document())
