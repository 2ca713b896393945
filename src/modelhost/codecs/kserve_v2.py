"""Open Inference Protocol v2 (KServe v2) REST bodies <-> numpy.

JSON tensors (nested or flat ``data``) and the binary tensor extension
(``Inference-Header-Content-Length`` + raw little-endian bytes after the JSON).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelhost.codecs.limits import DecodeLimits
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
    # Strings: elements are ``bytes`` (JSON strings UTF-8 encoded; binary: each element's
    # 4-byte little-endian length, then its bytes).
    "BYTES": "object",
}
NUMPY_TO_V2: dict[str, str] = {v: k for k, v in V2_TO_NUMPY.items()}
# A dimension past 2**31 - 1 cannot fit a request under any element limit (and overflows
# int32 sizes in some runtimes): refuse it as malformed before any arithmetic.
_MAX_DIM = 2**31 - 1
MAX_ID_CHARS = 1024
_DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True, slots=True)
class V2Request:
    """A decoded inference request: inputs, wanted outputs, which of them as binary, and
    how many classes to return for each output that asks for classification."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str]
    classification: Mapping[str, int] = field(default_factory=dict)


def decode_request(
    body: bytes,
    header_length: int | None,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    limits: DecodeLimits = _DEFAULT_LIMITS,
) -> V2Request:
    """Decode an inference request body against the model's signature.

    Each input's shape is checked against its signature and ``limits`` (batch rows,
    elements of all inputs together) before its data is converted or its bytes are viewed.

    Args:
        body: the whole HTTP body.
        header_length: the ``Inference-Header-Content-Length`` value, or None (JSON only).
        limits: per-request decode limits.

    Raises:
        InvalidInput: malformed JSON, missing or mistyped fields, unknown input or output
            names, shapes that do not fit the signature, datatype or element-count
            mismatches, bad binary sizes.
        PayloadTooLarge: over one of ``limits``; the message names the setting.
    """
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"of {len(body)} bytes"
            )
        head, tail = body[:header_length], memoryview(body)[header_length:]
    else:
        head, tail = body, memoryview(b"")
    limits.check_json_containers(head, inputs)
    doc = _parse_json(head)
    if not isinstance(doc, dict):
        raise InvalidInput("body must be a JSON object with an 'inputs' list")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id must be a string")
    if request_id is not None and len(request_id) > MAX_ID_CHARS:
        raise InvalidInput(f"id is {len(request_id)} characters long; at most {MAX_ID_CHARS}")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    if len(raw_inputs) > len(inputs):
        raise InvalidInput(
            f"inputs has {len(raw_inputs)} tensors; the model takes {len(inputs)}: "
            f"{[s.name for s in inputs]}"
        )
    specs = {s.name: s for s in inputs}
    headers = [_decode_header(i, raw, specs) for i, raw in enumerate(raw_inputs)]
    names = [h.name for h in headers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidInput(f"inputs[{i}].name {name!r} appears twice")
    for h in headers:
        limits.check_items(h.shape[0] if h.shape else 1, f"{h.field}.shape")
    limits.check_elements(sum(h.elements for h in headers), "inputs[*].shape")
    decoded: dict[str, np.ndarray] = {}
    offset = 0
    for h in headers:
        if h.binary_size is None:
            decoded[h.name] = _decode_json_data(h)
        else:
            decoded[h.name] = _decode_binary(h, tail[offset:])
            offset += h.binary_size
    if offset != len(tail):
        raise InvalidInput(
            f"{len(tail) - offset} bytes of binary data after the JSON are not claimed by "
            "any input's binary_data_size"
        )
    wanted, binary, classification = _decode_outputs(doc, outputs)
    return V2Request(request_id, decoded, wanted, binary, classification)


def _parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _TensorHeader:
    """One input's checked header: its shape fits the signature; data not yet converted."""

    field: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    elements: int
    binary_size: int | None
    data: Any


def _decode_header(i: int, raw: Any, specs: dict[str, TensorSpec]) -> _TensorHeader:
    field = f"inputs[{i}]"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{field} must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"{field}.name must be a string")
    spec = specs.get(name)
    if spec is None:
        raise InvalidInput(
            f"{field}.name {_shown(name)} is not an input of the model; it takes {sorted(specs)}"
        )
    shape = _check_shape(field, raw.get("shape"), spec)
    datatype = raw.get("datatype")
    np_name = V2_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if np_name is None:
        raise InvalidInput(
            f"{field}.datatype {_shown(datatype)} is not supported; use one of "
            f"{sorted(V2_TO_NUMPY)}"
        )
    if np_name != spec.dtype:
        raise InvalidInput(
            f"{field}.datatype {datatype} does not match the model's {NUMPY_TO_V2[spec.dtype]} "
            f"for input {name!r}"
        )
    params = raw.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise InvalidInput(f"{field}.parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidInput(f"{field}.parameters.binary_data_size must be a non-negative integer")
    if size is None and "data" not in raw:
        raise InvalidInput(f"{field}.data is missing (or send it as binary_data_size)")
    if size is not None and "data" in raw:
        raise InvalidInput(f"{field} has both data and parameters.binary_data_size; send one")
    dtype = np.dtype(np_name)
    return _TensorHeader(field, name, shape, dtype, math.prod(shape), size, raw.get("data"))


def _shown(value: Any) -> str:
    """A short repr of a client's value for an error message."""
    if isinstance(value, str | int | float | None):
        return repr(value)[:100]
    return f"(a JSON {'array' if isinstance(value, list) else 'object'})"


def _check_shape(field: str, shape: Any, spec: TensorSpec) -> tuple[int, ...]:
    """The declared shape, if it is a list of sizes that fits the signature."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_DIM for d in shape
    ):
        raise InvalidInput(f"{field}.shape must be a list of integers from 0 to {_MAX_DIM}")
    if len(shape) != len(spec.shape) or any(
        d not in (-1, s) for s, d in zip(shape, spec.shape, strict=True)
    ):
        shown = shape if len(shape) <= len(spec.shape) + 4 else [*shape[:8], "..."]
        raise InvalidInput(
            f"{field}.shape {shown} does not match the signature {list(spec.shape)} of "
            f"input {spec.name!r} (-1 = any size)"
        )
    return tuple(shape)


def _decode_json_data(h: _TensorHeader) -> np.ndarray:
    field = f"{h.field}.data"
    rows = h.shape[0] if h.shape else 1
    if h.dtype == object:
        return _decode_json_strings(h, field)
    if isinstance(h.data, list) and len(h.data) not in (h.elements, rows):
        # Refused before numpy converts it: the data cannot fit the declared shape.
        raise InvalidInput(
            f"{field}: data has {len(h.data)} elements at its top level; shape "
            f"{list(h.shape)} needs {h.elements} (flat) or {rows} rows (nested)"
        )
    arr = json_to_array(h.data, h.dtype, field)
    return check_element_count(arr, list(h.shape), field)


def _decode_json_strings(h: _TensorHeader, field: str) -> np.ndarray:
    """A BYTES tensor sent as JSON: a list of strings, flat or nested like the shape."""
    if not isinstance(h.data, list):
        raise InvalidInput(f"{field} must be a list of strings, not {_shown(h.data)}")
    flat: list[bytes] = []
    pending: list[Any] = [h.data]
    while pending:  # depth-first, in order; bounded by the JSON container count
        item = pending.pop()
        if isinstance(item, list):
            if len(flat) + len(item) > h.elements:
                break
            pending.extend(reversed(item))
        elif isinstance(item, str):
            flat.append(item.encode("utf-8"))
        else:
            raise InvalidInput(f"{field}: a BYTES tensor holds strings, not {_shown(item)}")
    if pending or len(flat) != h.elements:
        raise InvalidInput(
            f"{field}: data holds {'more than ' if pending else ''}{len(flat)} strings; "
            f"shape {list(h.shape)} needs {h.elements}"
        )
    arr = np.empty(h.elements, dtype=object)
    arr[:] = flat
    return arr.reshape(h.shape)


def _decode_binary_strings(h: _TensorHeader, raw: memoryview) -> np.ndarray:
    """BYTES elements in the binary extension's framing: a 4-byte little-endian length,
    then that many bytes, for each element."""
    elements: list[bytes] = []
    at = 0
    while at < len(raw) and len(elements) < h.elements:
        if at + 4 > len(raw):
            break
        length = int.from_bytes(raw[at : at + 4], "little")
        if at + 4 + length > len(raw):
            raise InvalidInput(
                f"{h.field}: element {len(elements)} claims {length} bytes; only "
                f"{len(raw) - at - 4} are left in its binary_data_size"
            )
        elements.append(bytes(raw[at + 4 : at + 4 + length]))
        at += 4 + length
    if len(elements) != h.elements or at != len(raw):
        raise InvalidInput(
            f"{h.field}: binary data holds {len(elements)} length-prefixed elements in "
            f"{at} of its {len(raw)} bytes; shape {list(h.shape)} needs {h.elements} "
            "elements filling binary_data_size exactly"
        )
    arr = np.empty(h.elements, dtype=object)
    arr[:] = elements
    return arr.reshape(h.shape)


def _decode_binary(h: _TensorHeader, tail: memoryview) -> np.ndarray:
    size = h.binary_size
    assert size is not None  # only called for binary inputs
    if size > len(tail):
        raise InvalidInput(
            f"{h.field}.parameters.binary_data_size {size} is more than the {len(tail)} bytes left"
        )
    if h.dtype == object:
        return _decode_binary_strings(h, tail[:size])
    expected = h.elements * h.dtype.itemsize
    if size != expected:
        raise InvalidInput(
            f"{h.field}: binary_data_size {size} does not match shape {list(h.shape)} of "
            f"{h.dtype} ({expected} bytes)"
        )
    arr = np.frombuffer(tail[:size], dtype=h.dtype.newbyteorder("<")).astype(h.dtype, copy=False)
    return arr.reshape(h.shape)


def _decode_outputs(
    doc: dict[str, Any], outputs: tuple[TensorSpec, ...]
) -> tuple[tuple[str, ...], frozenset[str], dict[str, int]]:
    """Wanted outputs, which of them as binary, and the ``classification`` count of each
    output that asks for one (Triton's classification extension)."""
    specs = {s.name: s for s in outputs}
    known = list(specs)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("parameters must be an object")
    all_binary = params.get("binary_data_output") is True
    raw = doc.get("outputs")
    if raw is None:
        return tuple(known), frozenset(known) if all_binary else frozenset(), {}
    if not isinstance(raw, list):
        raise InvalidInput("outputs must be a list of {name, parameters}")
    wanted: list[str] = []
    binary: set[str] = set()
    classification: dict[str, int] = {}
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in specs:  # a list or object is no name
            raise InvalidInput(
                f"outputs[{i}].name {_shown(name)} is not an output of the model: {known}"
            )
        if name in wanted:
            raise InvalidInput(f"outputs[{i}].name {name!r} appears twice")
        wanted.append(name)
        out_params = item.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise InvalidInput(f"outputs[{i}].parameters must be an object")
        flag = out_params.get("binary_data")
        if flag is True or (flag is None and all_binary):
            binary.add(name)
        count = out_params.get("classification")
        if count is not None:
            classification[name] = _classification_count(f"outputs[{i}]", count, specs[name])
    return tuple(wanted), frozenset(binary), classification


def _classification_count(field: str, count: Any, spec: TensorSpec) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InvalidInput(
            f"{field}.parameters.classification must be an integer >= 1 (how many classes "
            f"to return per row), not {_shown(count)}"
        )
    if spec.dtype == "bool":
        raise InvalidInput(
            f"{field}.parameters.classification: output {spec.name!r} is BOOL; only "
            "numeric outputs can be ranked"
        )
    return count


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    wanted: tuple[str, ...],
    binary: frozenset[str],
) -> tuple[bytes, int | None]:
    """Encode an inference response. An ``object`` array (elements ``bytes``) is a BYTES
    tensor: JSON strings, or in binary each element's 4-byte little-endian length, then it.

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
        is_bytes = arr.dtype == object
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": "BYTES" if is_bytes else NUMPY_TO_V2[arr.dtype.name],
            "shape": list(arr.shape),
        }
        if name in binary:
            raw = _bytes_tensor(arr) if is_bytes else _little_endian(arr)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        elif is_bytes:
            tensor["data"] = [bytes(e).decode("utf-8", "replace") for e in arr.reshape(-1)]
        else:
            tensor["data"] = arr.reshape(-1)
        tensors.append(tensor)
    doc["outputs"] = tensors
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tail:
        return head, None
    return head + b"".join(tail), len(head)


def _little_endian(arr: np.ndarray) -> bytes:
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _bytes_tensor(arr: np.ndarray) -> bytes:
    """BYTES elements in the binary extension's framing: 4-byte LE length, then the bytes."""
    return b"".join(len(e).to_bytes(4, "little") + e for e in map(bytes, arr.reshape(-1)))
