"""`GET /api/openapi.json`: a valid OpenAPI 3.1 document of every route, whose request
bodies are the schemas the views validate with."""
from __future__ import annotations

import re

from openapi_spec_validator import validate
from pydantic import BaseModel

from kimi_backend.api.openapi import build_document
from kimi_backend.schemas import CompletionRequest, HistoryRequest, StreamRequest, validated


def test_document_is_valid_openapi_31(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_document_lists_every_route_and_method(app, client):
    document = client.get("/api/openapi.json").get_json()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in document["paths"][path], f"{method} {rule.rule} missing"
    assert {"/health", "/health/ready", "/metrics", "/api/openapi.json", "/api/info"} <= set(document["paths"])


def test_request_bodies_are_the_validating_schemas(client):
    document = client.get("/api/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    for path, model in (("/api/chat/completion", CompletionRequest), ("/api/chat/history", HistoryRequest),
                        ("/api/chat/stream", StreamRequest)):
        ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model.__name__}"
        assert set(schemas[model.__name__]["properties"]) == set(model.model_fields)
    assert schemas["CompletionRequest"]["properties"]["temperature"]["anyOf"][0]["maximum"] == 1
    assert "text/event-stream" in document["paths"]["/api/chat/stream"]["post"]["responses"]["200"]["content"]


def test_chat_routes_document_the_dropped_params_header(client):
    paths = client.get("/api/openapi.json").get_json()["paths"]
    for path in ("/api/chat/completion", "/api/chat/history", "/api/chat/stream", "/v1/chat/completions"):
        assert "X-Kimi-Dropped-Params" in paths[path]["post"]["responses"]["200"]["headers"], path
    assert "headers" not in paths["/health"]["get"]["responses"]["200"]


def test_client_key_routes_declare_security_only_when_keys_are_required(make_app):
    keyed = make_app(REQUIRE_API_KEY="true", VALID_API_KEYS="k").test_client()
    paths = keyed.get("/api/openapi.json").get_json()["paths"]
    assert paths["/api/chat/completion"]["post"]["security"]
    assert "security" not in paths["/health"]["get"]
    open_paths = make_app().test_client().get("/api/openapi.json").get_json()["paths"]
    assert "security" not in open_paths["/api/chat/completion"]["post"]


def test_metrics_are_documented_as_text_and_blank_messages_as_refused(client):
    document = client.get("/api/openapi.json").get_json()
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    text_form = document["components"]["schemas"]["StreamRequest"]["properties"]["messages"]["anyOf"][0]
    assert text_form["minLength"] == 1 and text_form["pattern"] == r"\S"
    list_form = document["components"]["schemas"]["StreamRequest"]["properties"]["messages"]["anyOf"][1]
    assert list_form["maxItems"] == 1000


def test_a_route_added_later_appears_with_its_schema(app):
    class EchoRequest(BaseModel):
        text: str

    @app.post("/api/echo/<int:times>")
    @validated(EchoRequest)
    def echo(times: int, body: EchoRequest):
        """Echoes text."""
        return {"success": True, "text": body.text * times}

    assert app.test_client().post("/api/echo/2", json={"text": "ab"}).get_json()["text"] == "abab"
    document = build_document(app)
    validate(document)
    operation = document["paths"]["/api/echo/{times}"]["post"]
    assert operation["summary"] == "Echoes text."
    assert operation["parameters"][0]["name"] == "times"
    assert document["components"]["schemas"]["EchoRequest"]["required"] == ["text"]


def test_docs_page_renders_every_path_without_external_assets(client):
    page = client.get("/api/docs").get_data(as_text=True)
    assert "<h2><code>POST /api/chat/completion</code></h2>" in page
    assert "/api/openapi.json" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_every_endpoint_in_api_info_is_documented(client):
    paths = client.get("/api/openapi.json").get_json()["paths"]
    for endpoint in client.get("/api/info").get_json()["data"]["endpoints"]:
        assert endpoint["method"].lower() in paths[endpoint["path"]], endpoint


def test_openai_surface_is_documented_with_openais_error_shape(client):
    document = client.get("/api/openapi.json").get_json()
    operation = document["paths"]["/v1/chat/completions"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIChatRequest")
    assert operation["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "get" in document["paths"]["/v1/models"]
    info = client.get("/api/info").get_json()["data"]
    assert {("POST", "/v1/chat/completions"), ("GET", "/v1/models")} <= {(e["method"], e["path"]) for e in info["endpoints"]}


def test_admin_routes_declare_the_admin_key_and_their_query(client):
    operation = client.get("/api/openapi.json").get_json()["paths"]["/api/usage"]["get"]
    assert operation["security"] == [{"AdminKey": []}]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert set(parameters) == {"group_by", "from", "to", "format"}
    assert parameters["group_by"]["schema"]["enum"] == ["client", "model", "day"]
    assert all(parameter["in"] == "query" and not parameter["required"] for parameter in parameters.values())
