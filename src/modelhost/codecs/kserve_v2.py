"""Open Inference Protocol v2 (KServe v2) REST bodies <-> numpy.

JSON tensors (nested or flat ``data``) and the binary tensor extension
(``Inference-Header-Content-Length`` + raw little-endian bytes after the JSON).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelhost.codecs.tensors import check_element_count, json_to_array
from modelhost.errors import InvalidInput
from modelhost.types import TensorSpec

V2_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_V2: dict[str, str] = {v: k for k, v in V2_TO_NUMPY.items()}
_MAX_DIMS = 32


@dataclass(frozen=True, slots=True)
class V2Request:
    """A decoded inference request: inputs, wanted outputs and which of them as binary."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str]


def decode_request(
    body: bytes,
    header_length: int | None,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
) -> V2Request:
    """Decode an inference request body against the model's signature.

    Args:
        body: the whole HTTP body.
        header_length: the ``Inference-Header-Content-Length`` value, or None (JSON only).

    Raises:
        InvalidInput: malformed JSON, missing or mistyped fields, unknown input or output
            names, datatype or element-count mismatches, bad binary sizes.
    """
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"of {len(body)} bytes"
            )
        doc, tail = _parse_json(body[:header_length]), memoryview(body)[header_length:]
    else:
        doc, tail = _parse_json(body), memoryview(b"")
    if not isinstance(doc, dict):
        raise InvalidInput("body must be a JSON object with an 'inputs' list")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id must be a string")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    specs = {s.name: s for s in inputs}
    decoded: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        name, arr, used = _decode_input(i, raw, specs, tail[offset:])
        if name in decoded:
            raise InvalidInput(f"inputs[{i}].name {name!r} appears twice")
        decoded[name] = arr
        offset += used
    if offset != len(tail):
        raise InvalidInput(
            f"{len(tail) - offset} bytes of binary data after the JSON are not claimed by "
            "any input's binary_data_size"
        )
    wanted, binary = _decode_outputs(doc, outputs)
    return V2Request(request_id, decoded, wanted, binary)


def _parse_json(raw: bytes | memoryview) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc


def _decode_input(
    i: int, raw: Any, specs: dict[str, TensorSpec], tail: memoryview
) -> tuple[str, np.ndarray, int]:
    field = f"inputs[{i}]"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{field} must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"{field}.name must be a string")
    spec = specs.get(name)
    if spec is None:
        raise InvalidInput(
            f"{field}.name {name!r} is not an input of the model; it takes {sorted(specs)}"
        )
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput(f"{field}.shape must be a list of non-negative integers")
    datatype = raw.get("datatype")
    np_name = V2_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if np_name is None:
        raise InvalidInput(
            f"{field}.datatype {datatype!r} is not supported; use one of {sorted(V2_TO_NUMPY)}"
        )
    if np_name != spec.dtype:
        raise InvalidInput(
            f"{field}.datatype {datatype} does not match the model's {NUMPY_TO_V2[spec.dtype]} "
            f"for input {name!r}"
        )
    dtype = np.dtype(np_name)
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{field}.parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        return name, _decode_binary(field, size, dtype, shape, tail), int(size)
    if "data" not in raw:
        raise InvalidInput(f"{field}.data is missing (or send it as binary_data_size)")
    arr = json_to_array(raw["data"], dtype, f"{field}.data")
    return name, check_element_count(arr, shape, f"{field}.data"), 0


def _decode_binary(
    field: str, size: Any, dtype: np.dtype[Any], shape: list[int], tail: memoryview
) -> np.ndarray:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{field}.parameters.binary_data_size must be a non-negative integer")
    if size > len(tail):
        raise InvalidInput(
            f"{field}.parameters.binary_data_size {size} is more than the {len(tail)} bytes left"
        )
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no wrap-around
    if size != expected:
        raise InvalidInput(
            f"{field}: binary_data_size {size} does not match shape {shape} of {dtype} "
            f"({expected} bytes)"
        )
    arr = np.frombuffer(tail[:size], dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    return arr.reshape(shape)


def _decode_outputs(
    doc: dict[str, Any], outputs: tuple[TensorSpec, ...]
) -> tuple[tuple[str, ...], frozenset[str]]:
    known = [s.name for s in outputs]
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("parameters must be an object")
    all_binary = params.get("binary_data_output") is True
    raw = doc.get("outputs")
    if raw is None:
        return tuple(known), frozenset(known) if all_binary else frozenset()
    if not isinstance(raw, list):
        raise InvalidInput("outputs must be a list of {name, parameters}")
    wanted: list[str] = []
    binary: set[str] = set()
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in known:
            raise InvalidInput(f"outputs[{i}].name {name!r} is not an output of the model: {known}")
        wanted.append(name)
        out_params = item.get("parameters") or {}
        flag = out_params.get("binary_data") if isinstance(out_params, dict) else None
        if flag is True or (flag is None and all_binary):
            binary.add(name)
    return tuple(wanted), frozenset(binary)


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    wanted: tuple[str, ...],
    binary: frozenset[str],
) -> tuple[bytes, int | None]:
    """Encode an inference response.

    Returns:
        ``(body, header_length)``: ``header_length`` is the JSON part's length when binary
        outputs follow it (send it as ``Inference-Header-Content-Length``), else None.
    """
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    tensors = []
    tail: list[bytes] = []
    for name in wanted:
        arr = np.ascontiguousarray(outputs[name])
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": NUMPY_TO_V2[arr.dtype.name],
            "shape": list(arr.shape),
        }
        if name in binary:
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            tensor["data"] = arr.reshape(-1)
        tensors.append(tensor)
    doc["outputs"] = tensors
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tail:
        return head, None
    return head + b"".join(tail), len(head)
