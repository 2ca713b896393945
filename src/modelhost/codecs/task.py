"""One model version's meaning, the same for every protocol: what its requests decode to and
what its answers say. A frontend keeps only its envelope.

    codec = TaskCodec.for_manifest(manifest, inputs, outputs, limits, files)   once per version
    step = codec.decode(body, content_type)   image bytes or {"instances": [...]} ─► inputs
    step = codec.decode_tensors(body, n)      KServe v2 tensors (JSON / binary) ─► V2Request
    step = codec.decode_texts(texts, field)   strings (a text model) ─► token inputs
    codec.answer(outputs)                     the task's answer, one item per instance
    codec.tensors(outputs, {"logits": 3})     raw tensors, or Triton classification strings

The answer follows the manifest: a classifier (``postprocessing`` classification, or task
``classification``) answers ``{"label", "score", "top_k"}`` per instance; an ``embedding``
model one flat vector per instance (its first output); any other model its outputs' rows.
A text model (``TextPreprocessing``) takes strings where other models take tensors: JSON
instances are strings, its v2 input is one BYTES tensor ``text`` of shape ``[n]``; the
codec tokenizes them (:mod:`modelhost.codecs.text`).
Decoding returns priced :class:`~modelhost.codecs.steps.Step` s: every limit is checked
while the step is built, the work it bounds waits in ``step.run``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import orjson

from modelhost.archive.manifest import (
    ClassificationPostprocessing,
    EmbeddingPostprocessing,
    ImagePreprocessing,
    ModelSpec,
    TabularPreprocessing,
    TextPreprocessing,
)
from modelhost.codecs.classification import classification_strings, classify
from modelhost.codecs.images import decode_pixels, image_size
from modelhost.codecs.instances import plan_instances
from modelhost.codecs.kserve_v2 import V2Request, decode_request
from modelhost.codecs.limits import DecodeLimits
from modelhost.codecs.steps import Step, finish
from modelhost.codecs.tabular import TabularCodec
from modelhost.codecs.text import TextCodec
from modelhost.errors import ArchiveError, InvalidInput, UnsupportedMediaType
from modelhost.types import TensorSpec

Inputs = dict[str, np.ndarray]
Outputs = Mapping[str, np.ndarray]
_DEFAULT_LIMITS = DecodeLimits()
# What a text model's v2 requests send: its strings, one per row.
TEXT_INPUT = TensorSpec(name="text", dtype="object", shape=(-1,))


@dataclass(frozen=True, slots=True)
class TaskCodec:
    """Decoding and answering for one model version; built once, shared by every request.

    Attributes:
        task: the manifest's task.
        inputs, outputs: the version's signature.
        labels: class names by index (the first output's classes); may be empty.
        image: how an image becomes the first input, or None (the model takes no images).
        text: how strings become the token inputs, or None (the model takes no text).
        tabular: how named features become the input matrix, or None (not tabular).
        classifier: how the first output becomes labels, or None (not a classifier).
        shorten_to: the sizes an embedding model's vectors may be cut to (Matryoshka).
        limits: what one request may make the server decode.
        answer_kind: which of the answers in ``_ANSWERS`` this model gives.
    """

    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    image: ImagePreprocessing | None
    text: TextCodec | None
    tabular: TabularCodec | None
    classifier: ClassificationPostprocessing | None
    shorten_to: tuple[int, ...]
    limits: DecodeLimits
    answer_kind: str

    @classmethod
    def for_manifest(
        cls,
        manifest: ModelSpec,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        limits: DecodeLimits = _DEFAULT_LIMITS,
        files: Mapping[str, bytes] | None = None,
    ) -> TaskCodec:
        """The codec of a model version from its manifest, signature and the archive's
        codec files (``Manifest.codec_files``: a text model's tokenizer).

        Raises:
            ArchiveError: a codec file is missing or does not load.

        Example:
            >>> TaskCodec.for_manifest(manifest, inputs, outputs).answer_kind  # doctest: +SKIP
            'classification'
        """
        post = manifest.postprocessing
        classifier = post if isinstance(post, ClassificationPostprocessing) else None
        if classifier is None and manifest.task == "classification":
            classifier = ClassificationPostprocessing()
        if classifier is not None:
            kind = "classification"
        elif manifest.task == "embedding":
            kind = "embedding"
        else:
            kind = "rows" if len(outputs) == 1 else "named_rows"
        prep = manifest.preprocessing
        text = None
        if isinstance(prep, TextPreprocessing):
            raw = (files or {}).get(prep.tokenizer)
            if raw is None:
                raise ArchiveError(f"the archive's tokenizer {prep.tokenizer!r} was not read")
            text = TextCodec.build(prep, raw, inputs)
        tabular = None
        if isinstance(prep, TabularPreprocessing):
            try:
                tabular = TabularCodec.build(prep.features, inputs)
            except InvalidInput as exc:
                raise ArchiveError(str(exc)) from exc
        return cls(
            task=manifest.task,
            inputs=inputs,
            outputs=outputs,
            labels=manifest.labels,
            image=prep if isinstance(prep, ImagePreprocessing) else None,
            text=text,
            tabular=tabular,
            classifier=classifier,
            shorten_to=post.shorten_to if isinstance(post, EmbeddingPostprocessing) else (),
            limits=limits,
            answer_kind=kind,
        )

    @property
    def wire_inputs(self) -> tuple[TensorSpec, ...]:
        """The tensors a v2 request sends: the model's inputs; ``text`` for a text model;
        one tensor per feature for a tabular model."""
        if self.text is not None:
            return (TEXT_INPUT,)
        if self.tabular is not None:
            return self.tabular.wire_inputs
        return self.inputs

    # -- decoding ------------------------------------------------------------------------

    def decode(self, body: bytes, content_type: str) -> Step[Inputs]:
        """The model's inputs from a body of ``content_type`` (lower case, no parameters):
        ``image/png`` / ``image/jpeg`` one image (a batch of one), ``application/json``
        ``{"instances": [...]}`` (see :mod:`modelhost.codecs.instances`), ``text/csv`` rows
        of named features (a tabular model, see :mod:`modelhost.codecs.tabular`).

        An image's header is read and its size charged here; decoding waits in the step.

        Raises:
            UnsupportedMediaType: any other content type.
            InvalidInput: an image for a model that takes none, or an unreadable header.
            PayloadTooLarge: the image declares more pixels than the limits allow.
        """
        decoder = _DECODERS.get(content_type)
        if decoder is None:
            raise UnsupportedMediaType(
                f"Content-Type {content_type or '(none)'!r} is not accepted; send "
                "application/json instances, image/png or image/jpeg bytes, or text/csv rows"
            )
        return decoder(self, body)

    def _image(self, body: bytes) -> Step[Inputs]:
        prep = self.image
        if prep is None:
            raise InvalidInput("this model takes no images; send JSON instances")
        size = image_size(body, "body")
        self.limits.pixel_budget().take(*size, "body")
        spec = self.inputs[0]

        def decode() -> Inputs:
            image = decode_pixels(body, prep, size, "body")
            return {spec.name: image[np.newaxis].astype(spec.dtype, copy=False)}

        return Step(decode, body_bytes=len(body), pixels=size[0] * size[1])

    def _instances(self, body: bytes) -> Step[Inputs]:
        if self.text is not None:
            return Step(partial(self._text_instances, body), body_bytes=len(body))
        if self.tabular is not None:
            return Step(partial(self._records, body), body_bytes=len(body))
        run = partial(plan_instances, body, self.inputs, self.image, self.limits)
        return Step(run, body_bytes=len(body))

    def _text_instances(self, body: bytes) -> Step[Inputs]:
        texts = _instances_list(body, (TEXT_INPUT,), self.limits, '"text"')
        return self.decode_texts(texts, "instances")

    def _records(self, body: bytes) -> Inputs:
        tabular = self.tabular
        assert tabular is not None  # only decoders of tabular models get here
        records = _instances_list(body, self.inputs, self.limits, "{record}")
        return {tabular.input.name: tabular.records(records, "instances", self.limits)}

    def _csv(self, body: bytes) -> Step[Inputs]:
        tabular = self.tabular
        if tabular is None:
            raise UnsupportedMediaType(
                "Content-Type 'text/csv' is for tabular models (named features); this model "
                "takes application/json instances"
                + (" or image/png or image/jpeg bytes" if self.image is not None else "")
            )
        return Step(
            lambda: {tabular.input.name: tabular.csv(body, self.limits)}, body_bytes=len(body)
        )

    def decode_texts(self, texts: Sequence[object], field: str) -> Step[Inputs]:
        """A text model's token inputs for ``texts`` (strings, or UTF-8 ``bytes``), one row
        each; they are checked here, tokenized in the step (priced by their characters).

        Raises:
            InvalidInput: not a text model; no texts; an item not a string, not UTF-8 or
                empty, named ``field[i]``; (in the step) a text over the archive's token
                limit when it does not truncate.
            PayloadTooLarge: more texts than ``max_request_items``; (in the step) more
                tokens than ``max_request_elements``.
        """
        text = self.text
        if text is None:
            raise InvalidInput("this model takes no text; send tensors")
        if not texts:
            raise InvalidInput(f"{field} must be a non-empty list of strings")
        self.limits.check_items(len(texts), field)
        checked = text.check(texts, field)

        def encode() -> Inputs:
            arrays = text.encode(checked, field)
            self.limits.check_elements(sum(a.size for a in arrays.values()), field)
            return arrays

        return Step(encode, body_bytes=sum(len(t) for t in checked))

    def decode_tensors(self, body: bytes, header_length: int | None) -> Step[V2Request]:
        """A KServe v2 inference body (see :func:`modelhost.codecs.kserve_v2.decode_request`).

        The step is priced by its JSON part only: binary tensors after it become arrays
        without a copy.
        """
        json_bytes = len(body) if header_length is None else min(header_length, len(body))
        run = partial(
            decode_request, body, header_length, self.wire_inputs, self.outputs, self.limits
        )
        if self.text is not None:
            return Step(partial(self._tokenized, run), body_bytes=json_bytes)
        if self.tabular is not None:
            return Step(partial(self._tabulated, run), body_bytes=json_bytes)
        return Step(run, body_bytes=json_bytes)

    def _tabulated(self, decode: Callable[[], V2Request]) -> V2Request:
        request = decode()
        tabular = self.tabular
        assert tabular is not None  # only tabular models decode this way
        matrix = tabular.tensors(request.inputs)
        return dataclasses.replace(request, inputs={tabular.input.name: matrix})

    def _tokenized(self, decode: Callable[[], V2Request]) -> Step[V2Request]:
        request = decode()
        texts = request.inputs[TEXT_INPUT.name]
        tokens = self.decode_texts(list(texts), "inputs[text].data")
        return Step(
            lambda: dataclasses.replace(request, inputs=finish(tokens)),
            body_bytes=tokens.body_bytes,
        )

    # -- answers ---------------------------------------------------------------------------

    def answer(self, outputs: Outputs) -> list[Any]:
        """The task's answer for each instance of a result (rows along axis 0 of
        ``outputs``): ``{"label", "score", "top_k": [{"label", "score"}, ...]}`` for a
        classifier, a flat vector for an embedding model, else each output's rows (an object
        of named rows when the model has several outputs). Arrays stay numpy (orjson
        serializes them)."""
        return _ANSWERS[self.answer_kind](self, outputs)

    def vectors(self, outputs: Outputs, dimensions: int | None = None) -> np.ndarray:
        """An embedding model's vectors, one row per instance: all of each, or the first
        ``dimensions`` rescaled to unit length (a size of ``shorten_to``, or the width).

        Raises:
            InvalidInput: not an embedding model, or a size it cannot be cut to.
        """
        if self.answer_kind != "embedding":
            raise InvalidInput(f"this is a {self.task} model, not an embedding model")
        rows = _rows_of_first(self, outputs)
        width = rows.shape[1]
        if dimensions is None or dimensions == width:
            return rows
        if dimensions not in self.shorten_to:
            sizes = ", ".join(map(str, (width, *self.shorten_to)))
            raise InvalidInput(
                f"dimensions {dimensions}: this model's vectors have {width} and can be cut "
                f"to {sizes} only"
            )
        cut = rows[:, :dimensions]
        norms = np.linalg.norm(cut, axis=1, keepdims=True)
        shortened: np.ndarray = (cut / np.maximum(norms, 1e-12)).astype(rows.dtype, copy=False)
        return shortened

    def tensors(self, outputs: Outputs, classification: Mapping[str, int]) -> Outputs:
        """Outputs as raw tensors, except each output named in ``classification``: its top
        ``k`` values per row as Triton's classification strings (a BYTES tensor of shape
        (rows, k); see :func:`modelhost.codecs.classification.classification_strings`).
        Labels apply to the first output."""
        if not classification:
            return outputs
        first = self.outputs[0].name
        ranked = dict(outputs)
        for name, k in classification.items():
            labels = self.labels if name == first else ()
            ranked[name] = classification_strings(np.asarray(outputs[name]), k, labels)
        return ranked


_DECODERS: dict[str, Callable[[TaskCodec, bytes], Step[Inputs]]] = {
    "image/png": TaskCodec._image,
    "image/jpeg": TaskCodec._image,
    "application/json": TaskCodec._instances,
    "text/csv": TaskCodec._csv,
}


def _instances_list(
    body: bytes, inputs: tuple[TensorSpec, ...], limits: DecodeLimits, example: str
) -> list[Any]:
    """The ``instances`` list of a native JSON body (its containers counted first)."""
    limits.check_json_containers(body, inputs)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise InvalidInput(f'body must be a JSON object {{"instances": [{example}, ...]}}')
    instances: list[Any] = doc["instances"]
    return instances


def _rows_of_first(codec: TaskCodec, outputs: Outputs) -> np.ndarray:
    first = outputs[codec.outputs[0].name]
    return first.reshape(first.shape[0], -1)


def _classes(codec: TaskCodec, outputs: Outputs) -> list[Any]:
    assert codec.classifier is not None  # answer_kind "classification" has one
    return classify(_rows_of_first(codec, outputs), codec.labels, codec.classifier)


def _vectors(codec: TaskCodec, outputs: Outputs) -> list[Any]:
    return list(_rows_of_first(codec, outputs))


def _rows(codec: TaskCodec, outputs: Outputs) -> list[Any]:
    return list(outputs[codec.outputs[0].name])


def _named_rows(codec: TaskCodec, outputs: Outputs) -> list[Any]:
    names = [spec.name for spec in codec.outputs]
    rows = outputs[names[0]].shape[0]
    return [{name: outputs[name][i] for name in names} for i in range(rows)]


_ANSWERS: dict[str, Callable[[TaskCodec, Outputs], list[Any]]] = {
    "classification": _classes,
    "embedding": _vectors,
    "rows": _rows,
    "named_rows": _named_rows,
}
