"""The native ``{"instances": [...]}`` body -> one batch of input arrays.

An instance is, for a one-input model, the item itself (nested lists shaped like the
signature without the batch axis) or, for an image model, ``{"b64": "<PNG or JPEG>"}``;
for a many-input model, an object mapping input names to items.

    plan_instances(body)  parse, check every limit, base64-decode, read image headers
       └─► arrays, or a Step decoding the images' pixels (charged, priced in pixels)
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
import orjson

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.codecs.images import decode_pixels, image_size
from modelhost.codecs.limits import DecodeLimits
from modelhost.codecs.steps import Step, finish
from modelhost.codecs.tensors import json_to_array
from modelhost.errors import InvalidInput
from modelhost.types import TensorSpec

_DEFAULT_LIMITS = DecodeLimits()


def decode_instances(
    body: bytes,
    inputs: tuple[TensorSpec, ...],
    prep: ImagePreprocessing | None,
    limits: DecodeLimits = _DEFAULT_LIMITS,
) -> dict[str, np.ndarray]:
    """Decode a native predict body into arrays with a leading batch axis, in one go.

    See :func:`plan_instances` for the checks and errors.
    """
    return finish(plan_instances(body, inputs, prep, limits))


def plan_instances(
    body: bytes,
    inputs: tuple[TensorSpec, ...],
    prep: ImagePreprocessing | None,
    limits: DecodeLimits = _DEFAULT_LIMITS,
) -> dict[str, np.ndarray] | Step[dict[str, np.ndarray]]:
    """Decode a native predict body into arrays with a leading batch axis; images' pixels
    are left to the returned step (their sizes already read and charged).

    Every limit is checked before the work it bounds: JSON containers before parsing,
    the number of instances and the elements they declare before converting any, each
    image's size from its header before decoding it.

    Raises:
        InvalidInput: malformed JSON, no or empty ``instances``, items of the wrong shape
            or type, undecodable base64 images; the message names the field.
        PayloadTooLarge: over one of ``limits``; the message names the setting.
    """
    limits.check_json_containers(body, inputs)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or "instances" not in doc:
        raise InvalidInput('body must be a JSON object {"instances": [...]}')
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("instances must be a non-empty list")
    limits.check_items(len(instances), "instances")
    if len(inputs) > 1:
        return _decode_named(instances, inputs, limits)
    spec = inputs[0]
    if isinstance(instances[0], dict) and "b64" in instances[0]:
        return _plan_images(instances, spec, prep, limits)
    _check_declared_elements(len(instances), (spec,), limits)
    arr = _decode_items(instances, spec, "instances")
    limits.check_elements(arr.size, "instances")
    return {spec.name: arr}


def _check_declared_elements(
    rows: int, specs: tuple[TensorSpec, ...], limits: DecodeLimits
) -> None:
    """The fewest elements ``rows`` instances can hold (fixed dims only), before converting."""
    least = sum(rows * math.prod(d for d in s.shape[1:] if d > 0) for s in specs)
    limits.check_elements(least, "instances")


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


def _plan_images(
    instances: list[Any], spec: TensorSpec, prep: ImagePreprocessing | None, limits: DecodeLimits
) -> Step[dict[str, np.ndarray]]:
    if prep is None:
        raise InvalidInput("instances[0] is a b64 image but this model takes no images")
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
            raise InvalidInput(
                f'instances[{i}] must be {{"b64": "<base64 PNG or JPEG>"}} like instances[0]'
            )
    channels = 1 if prep.grayscale else 3
    limits.check_elements(len(instances) * channels * prep.width * prep.height, "instances")
    budget = limits.pixel_budget()
    images = []
    for i, item in enumerate(instances):
        field = f"instances[{i}]"
        try:
            raw = base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"{field}.b64 is not valid base64") from exc
        size = image_size(raw, f"{field}.b64")
        budget.take(*size, f"{field}.b64")
        images.append((raw, size))

    def decode() -> dict[str, np.ndarray]:
        arrays = [
            decode_pixels(raw, prep, size, f"instances[{i}].b64")
            for i, (raw, size) in enumerate(images)
        ]
        return {spec.name: np.stack(arrays).astype(spec.dtype, copy=False)}

    return Step(decode, pixels=budget.used)


def _decode_named(
    instances: list[Any], inputs: tuple[TensorSpec, ...], limits: DecodeLimits
) -> dict[str, np.ndarray]:
    names = [s.name for s in inputs]
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or set(item) != set(names):
            raise InvalidInput(f"instances[{i}] must be an object with exactly the keys {names}")
        for name in names:
            columns[name].append(item[name])
    _check_declared_elements(len(instances), inputs, limits)
    arrays = {s.name: _decode_items(columns[s.name], s, f"instances[*].{s.name}") for s in inputs}
    limits.check_elements(sum(a.size for a in arrays.values()), "instances")
    return arrays
