"""The native ``{"instances": [...]}`` body -> one batch of input arrays.

An instance is, for a one-input model, the item itself (nested lists shaped like the
signature without the batch axis) or, for an image model, ``{"b64": "<PNG or JPEG>"}``;
for a many-input model, an object mapping input names to items.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.codecs.images import decode_image
from modelhost.codecs.tensors import json_to_array
from modelhost.errors import InvalidInput
from modelhost.types import TensorSpec


def decode_instances(
    body: bytes, inputs: tuple[TensorSpec, ...], prep: ImagePreprocessing | None
) -> dict[str, np.ndarray]:
    """Decode a native predict body into arrays with a leading batch axis.

    Raises:
        InvalidInput: malformed JSON, no or empty ``instances``, items of the wrong shape
            or type, undecodable base64 images; the message names the field.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or "instances" not in doc:
        raise InvalidInput('body must be a JSON object {"instances": [...]}')
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("instances must be a non-empty list")
    if len(inputs) > 1:
        return _decode_named(instances, inputs)
    spec = inputs[0]
    if isinstance(instances[0], dict) and "b64" in instances[0]:
        return {spec.name: _decode_images(instances, spec, prep)}
    return {spec.name: _decode_items(instances, spec, "instances")}


def _decode_items(items: list[Any], spec: TensorSpec, field: str) -> np.ndarray:
    arr = json_to_array(items, np.dtype(spec.dtype), field)
    item_shape = spec.shape[1:]
    got = arr.shape[1:]
    if len(got) != len(item_shape) or any(
        d not in (-1, g) for g, d in zip(got, item_shape, strict=True)
    ):
        raise InvalidInput(
            f"{field}: each item has shape {list(got)}; input {spec.name!r} wants "
            f"{list(item_shape)} per item (-1 = any size)"
        )
    return arr


def _decode_images(
    instances: list[Any], spec: TensorSpec, prep: ImagePreprocessing | None
) -> np.ndarray:
    if prep is None:
        raise InvalidInput("instances[0] is a b64 image but this model takes no images")
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
            raise InvalidInput(
                f'instances[{i}] must be {{"b64": "<base64 PNG or JPEG>"}} like instances[0]'
            )
    images = []
    for i, item in enumerate(instances):
        field = f"instances[{i}]"
        try:
            raw = base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"{field}.b64 is not valid base64") from exc
        images.append(decode_image(raw, prep, f"{field}.b64"))
    return np.stack(images).astype(spec.dtype, copy=False)


def _decode_named(instances: list[Any], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    names = [s.name for s in inputs]
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or set(item) != set(names):
            raise InvalidInput(f"instances[{i}] must be an object with exactly the keys {names}")
        for name in names:
            columns[name].append(item[name])
    return {s.name: _decode_items(columns[s.name], s, f"instances[*].{s.name}") for s in inputs}
