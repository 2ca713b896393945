"""The OpenAPI 3.1 document of the inference HTTP routes, served at ``GET /openapi.json``.

It describes what the routes of ``native.py``, ``kserve_v2.py``, ``openai.py``, ``health.py``
and ``metrics.py`` accept and answer, errors included (``{"error", "code"}``; OpenAI's shape on
its routes), so that clients can
be generated from it and schemathesis can fuzz every operation against it
(tests/integration/test_openapi_schemathesis.py). It is built once, at app build time.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.codecs.kserve_v2 import MAX_ID_CHARS, V2_TO_NUMPY

_JSON = "application/json"
_ERROR_STATUSES = {
    "400": "The request does not fit the wire format or the model's signature",
    "401": "No or a wrong bearer token (when the server has an inference token)",
    "404": "No such model or version",
    "413": "The body, or what it decodes to, is over a limit; the message names the setting",
    "415": "The Content-Type is not one the route accepts",
    "503": "The model is loading, draining or overloaded (Retry-After)",
    "504": "The request was not answered before its deadline",
}


def _openai_errors(*statuses: str) -> dict[str, Any]:
    # The body limit and the bearer token are checked before any route (native shape).
    early = {"401", "413"}
    return {
        s: _json(
            {"oneOf": [_ref("OpenAIError"), _ref("Error")]} if s in early else _ref("OpenAIError"),
            _ERROR_STATUSES[s],
        )
        for s in statuses
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: _json(_ref("Error"), _ERROR_STATUSES[s]) for s in statuses}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_NAME = _path_param("name", "model name")
_VERSION = _path_param("version", "model version")

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code"],
        "properties": {
            "error": {"type": "string", "description": "what is wrong and how to fix it"},
            "code": {"type": "string", "description": "stable code of the error class"},
        },
    },
    "Datatype": {"type": "string", "enum": sorted(V2_TO_NUMPY)},
    "OutputDatatype": {
        "type": "string",
        "enum": sorted(V2_TO_NUMPY),
        "description": "BYTES: strings, e.g. an output asked for with classification",
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": _ref("Datatype"),
            "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1: any"},
        },
    },
    "TensorData": {
        "description": "numbers or booleans, flat (row-major) or nested like the shape; "
        'strings for a BYTES output ("value:index[:label]" for classification)',
        "type": "array",
    },
    "RequestInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
            },
            "datatype": _ref("Datatype"),
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data_size": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "bytes of this tensor in the binary tail (then no data)",
                    }
                },
            },
            "data": _ref("TensorData"),
        },
    },
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data": {"type": "boolean"},
                    "classification": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "answer the top k values of each row, highest first, "
                        'as BYTES strings "value:index[:label]" (Triton\'s classification '
                        "extension) instead of the raw tensor; k is clamped to the row",
                    },
                },
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "maxLength": MAX_ID_CHARS},
            "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
            "outputs": {
                "type": "array",
                "items": _ref("RequestOutput"),
                "description": "outputs wanted, each name once (default: all, raw)",
            },
            "parameters": {
                "type": "object",
                "properties": {"binary_data_output": {"type": "boolean"}},
            },
        },
    },
    "ResponseOutput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": _ref("OutputDatatype"),
            "data": _ref("TensorData"),
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": _ref("ResponseOutput")},
        },
    },
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "OpenAIModel": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "EmbeddingsRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "description": "a model name, or name:version"},
            "input": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "minItems": 1, "items": {"type": "string"}},
                ]
            },
            "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1},
            "user": {"type": "string"},
        },
    },
    "EmbeddingsResponse": {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"const": "list"},
            "model": {"type": "string"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["object", "index", "embedding"],
                    "properties": {
                        "object": {"const": "embedding"},
                        "index": {"type": "integer", "minimum": 0},
                        "embedding": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "description": "base64 float32 LE"},
                            ]
                        },
                    },
                },
            },
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "total_tokens"],
                "properties": {
                    "prompt_tokens": {"type": "integer", "minimum": 0},
                    "total_tokens": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
    "PredictRequest": {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "description": "items shaped like the input without the batch axis, "
                '{"b64": "<PNG or JPEG>"} for image models, or objects of named inputs',
            }
        },
    },
    "PredictResponse": {
        "type": "object",
        "required": ["predictions"],
        "properties": {
            "predictions": {
                "type": "array",
                "description": "the task's answer per instance: {label, score, top_k} for a "
                "classifier, a vector for an embedding model, else the output rows",
            }
        },
    },
}


def _v2_infer() -> dict[str, Any]:
    binary_header = {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "description": "bytes of JSON at the start of the body; raw tensors follow",
        "schema": {"type": "integer", "minimum": 1},
    }
    binary_body = {"schema": {"type": "string", "format": "binary"}}
    return {
        "post": {
            "summary": "Run inference (Open Inference Protocol v2)",
            "description": "Answers the model's raw output tensors; an output requested with "
            "parameters.classification = k answers its top k per row instead.",
            "parameters": [binary_header],
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: {"schema": _ref("InferRequest")},
                    "application/octet-stream": binary_body,
                },
            },
            "responses": {
                "200": {
                    "description": "the outputs; binary ones after the JSON",
                    "content": {
                        _JSON: {"schema": _ref("InferResponse")},
                        "application/octet-stream": binary_body,
                    },
                },
                **_errors("400", "401", "404", "413", "415", "503", "504"),
            },
        }
    }


def _predict() -> dict[str, Any]:
    image = {"schema": {"type": "string", "format": "binary"}}
    return {
        "post": {
            "summary": "Predict: JSON instances or one PNG/JPEG image",
            "description": "Answers what the model's task says: labels and scores for a "
            "classifier, vectors for an embedding model, the output rows otherwise.",
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: {"schema": _ref("PredictRequest")},
                    "image/png": image,
                    "image/jpeg": image,
                },
            },
            "responses": {
                "200": {
                    **_json(_ref("PredictResponse"), "one prediction per instance"),
                    "headers": {"X-Model-Version": {"schema": {"type": "string"}}},
                },
                **_errors("400", "401", "404", "413", "415", "503", "504"),
            },
        }
    }


def _embeddings() -> dict[str, Any]:
    return {
        "post": {
            "summary": "Embeddings (OpenAI-compatible) of strings, by a text embedding model",
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": _ref("EmbeddingsRequest")}},
            },
            "responses": {
                "200": _json(_ref("EmbeddingsResponse"), "one embedding per input, in order"),
                **_openai_errors("400", "401", "404", "413", "503", "504"),
            },
        }
    }


def _get(summary: str, schema: dict[str, Any], *errors: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": _json(schema, summary), **_errors(*errors)},
        }
    }


def _with(params: list[dict[str, Any]], item: dict[str, Any]) -> dict[str, Any]:
    return {"parameters": params, **item}


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the inference routes (health, metrics, v2, native).

    Args:
        version: the server's version, given as ``info.version``.
    """
    obj = {"type": "object"}
    strings = {"type": "array", "items": {"type": "string"}}
    server_meta = {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": strings,
        },
    }
    model_meta = {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": strings,
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
        },
    }
    ready = {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    described = {
        "type": "object",
        "required": ["id", "object", "name", "ready", "default_version", "versions"],
        "properties": {
            **_SCHEMAS["OpenAIModel"]["properties"],
            "name": {"type": "string"},
            "ready": {"type": "boolean"},
            "default_version": {"type": "string"},
            "versions": strings,
        },
    }
    live = {"type": "object", "properties": {"live": {"type": "boolean"}}}
    readiness = {"type": "object", "properties": {"ready": {"type": "boolean"}}}
    metrics_text = {"schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/v2/health/live": _get("The process answers", live),
        "/v2/health/ready": {
            "get": {
                "summary": "Every model loaded and not shutting down",
                "responses": {
                    "200": _json(readiness, "ready"),
                    "503": _json(readiness, "not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text, or OpenMetrics when Accept asks for it",
                        "content": {
                            "text/plain": metrics_text,
                            "application/openmetrics-text": metrics_text,
                        },
                    }
                },
            }
        },
        "/openapi.json": _get("This document", obj),
        "/v2": _get("Server metadata", server_meta, "401"),
        "/v2/models/{name}": _with(
            [_NAME], _get("Model metadata", model_meta, "401", "404", "503")
        ),
        "/v2/models/{name}/versions/{version}": _with(
            [_NAME, _VERSION], _get("Model version metadata", model_meta, "401", "404", "503")
        ),
        "/v2/models/{name}/ready": _with(
            [_NAME], _get("Model readiness", ready, "401", "404", "503")
        ),
        "/v2/models/{name}/versions/{version}/ready": _with(
            [_NAME, _VERSION], _get("Model version readiness", ready, "401", "404", "503")
        ),
        "/v2/models/{name}/infer": _with([_NAME], _v2_infer()),
        "/v2/models/{name}/versions/{version}/infer": _with([_NAME, _VERSION], _v2_infer()),
        "/v1/models": _get(
            "The loaded models (OpenAI's list, and KServe v1's names)",
            {
                "type": "object",
                "required": ["object", "data", "models"],
                "properties": {
                    "object": {"const": "list"},
                    "data": {"type": "array", "items": _ref("OpenAIModel")},
                    "models": strings,
                },
            },
            "401",
            "503",
        ),
        "/v1/embeddings": _embeddings(),
        "/v1/models/{name}": _with(
            [_NAME], _get("A model's versions", described, "401", "404", "503")
        ),
        "/v1/models/{name}:predict": _with([_NAME], _predict()),
        "/v1/models/{name}/versions/{version}:predict": _with([_NAME, _VERSION], _predict()),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelhost inference API", "version": version},
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }


class OpenAPIDocumentAPI:
    """``GET /openapi.json``: the document, serialized once."""

    def __init__(self, version: str) -> None:
        self._body = orjson.dumps(openapi_document(version))

    def routes(self) -> list[Route]:
        return [Route("/openapi.json", self.document, methods=["GET"])]

    async def document(self, _: Request) -> Response:
        return Response(self._body, media_type=_JSON)
