"""Hostile archives for tests: valid ones built for real, then broken on purpose.

Zip level: members whose bytes, CRC, compression method or sizes lie (``patch_member``),
hand-written manifests (``manifest_json``), raw zips written member by member (``raw_zip``).
Runtime level: safetensors files whose header lies (``LYING_SAFETENSORS``) and ONNX models
whose tensors point at files outside the archive (``onnx_external_data_model``).

Every builder writes real files that ``open_archive`` or a runtime then reads; nothing is
mocked.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from modelhost.archive import Manifest, ModelSpec, OpenedArchive, open_archive, write_archive
from modelhost.archive.manifest import FileEntry, TensorSignature

SPEC = ModelSpec(
    runtime="onnx",
    inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 4)),),
    outputs=(TensorSignature(name="y", dtype="float32", shape=(-1, 2)),),
)
FILES = {
    "model.onnx": bytes(range(256)) * 16,
    "extra/labels.txt": b"cat\ndog\n" * 50,
}

# Compression methods zipfile cannot read: reserved, PKWARE-only, or made up.
UNSUPPORTED_METHODS = (1, 6, 7, 9, 10, 11, 13, 15, 17, 95, 97, 98, 99, 0xFFFF)
# Methods zipfile can read, declared over data that is not in that format.
MISDECLARED_METHODS = (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, zipfile.ZIP_DEFLATED)

_LOCAL = struct.Struct("<4s2B4HL2L2H")  # local file header, 30 bytes
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory record, 46 bytes


def entry(data: bytes) -> FileEntry:
    """The manifest entry (sha256, size) of ``data``."""
    return FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def manifest_json(listing: dict[str, bytes], /, spec: ModelSpec = SPEC, **changes: object) -> bytes:
    """manifest.json bytes listing ``listing`` (name -> bytes), top-level fields replaced."""
    manifest = Manifest(
        **spec.model_dump(),
        name="m",
        version="1",
        files={name: entry(data) for name, data in listing.items()},
    )
    doc = json.loads(manifest.model_dump_json())
    doc.update(changes)
    return json.dumps(doc).encode()


def raw_zip(
    path: Path,
    members: Iterable[tuple[str | zipfile.ZipInfo, bytes]],
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """Write ``members`` ((name or ZipInfo, bytes) pairs) as they are, in order.

    Names are written unchecked (empty, ``..``, duplicates): that is the point.
    """
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compression=compression) as zf:
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        for name, data in members:
            if isinstance(name, str):
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = compression
                info.external_attr = 0o644 << 16
            else:
                info = name
            zf.writestr(info, data)
    return path


def valid_archive(
    tmp: Path, files: dict[str, bytes] | None = None, spec: ModelSpec = SPEC, name: str = "m.mh"
) -> Path:
    """A valid archive written by ``write_archive`` holding ``files`` (default ``FILES``)."""
    files = FILES if files is None else files
    src = tmp / f"{name}.src"
    paths = {}
    for member, data in files.items():
        path = src / member
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[member] = path
    out = tmp / name
    write_archive(spec, paths, name="m", version="1", out=out)
    return out


def opened_archive(tmp: Path, spec: ModelSpec, files: dict[str, bytes]) -> OpenedArchive:
    """Write ``files`` into a real archive with ``write_archive`` and open it (verified)."""
    out = valid_archive(tmp, files, spec, name=f"{uuid.uuid4().hex[:8]}.mh")
    return open_archive(out, tmp / f"{out.name}.opened")


def member_data_span(path: Path, member: str) -> tuple[int, int]:
    """Byte offsets [start, end) of ``member``'s compressed data inside the zip at ``path``."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    fields = _LOCAL.unpack_from(raw, info.header_offset)
    start = info.header_offset + _LOCAL.size + fields[-2] + fields[-1]
    return start, start + info.compress_size


def patch_member(
    path: Path,
    member: str,
    *,
    method: int | None = None,
    crc: int | None = None,
    compress_size: int | None = None,
    file_size: int | None = None,
) -> Path:
    """Rewrite fields of ``member`` in both its local header and its central record."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        central = _central_offset(raw, zf.start_dir, member)
    for offset, base in ((info.header_offset, 8), (central, 10)):
        if method is not None:
            struct.pack_into("<H", raw, offset + base, method)
        if crc is not None:
            struct.pack_into("<L", raw, offset + base + 6, crc)
        if compress_size is not None:
            struct.pack_into("<L", raw, offset + base + 10, compress_size)
        if file_size is not None:
            struct.pack_into("<L", raw, offset + base + 14, file_size)
    path.write_bytes(bytes(raw))
    return path


def flip_member_bytes(path: Path, member: str, *, at: float = 0.5, count: int = 4) -> Path:
    """Invert ``count`` bytes of ``member``'s compressed data at fraction ``at`` of it."""
    start, end = member_data_span(path, member)
    raw = bytearray(path.read_bytes())
    first = start + int((end - start - count) * at)
    for i in range(first, min(first + count, end)):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def _central_offset(raw: bytearray, start_dir: int, member: str) -> int:
    offset = start_dir
    while raw[offset : offset + 4] == b"PK\x01\x02":
        fields = _CENTRAL.unpack_from(raw, offset)
        name_len, extra_len, comment_len = fields[12], fields[13], fields[14]
        name = bytes(raw[offset + _CENTRAL.size : offset + _CENTRAL.size + name_len])
        if name.decode("utf-8", "replace") == member:
            return offset
        offset += _CENTRAL.size + name_len + extra_len + comment_len
    raise KeyError(member)


# -- safetensors -------------------------------------------------------------------------


def safetensors_bytes(
    header: dict[str, object] | bytes, data: bytes, *, length: int | None = None
) -> bytes:
    """A safetensors file: 8-byte little-endian header length, JSON header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _tensor(dtype: object, shape: list[int], start: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


# name -> bytes of a weights file for one parameter "scale" (a float32 scalar) that lies.
LYING_SAFETENSORS: dict[str, bytes] = {
    "header length 2**60": safetensors_bytes(
        {"scale": _tensor("F32", [], 0, 4)}, bytes(4), length=2**60
    ),
    "header length past the end": safetensors_bytes(
        {"scale": _tensor("F32", [], 0, 4)}, bytes(4), length=4096
    ),
    "header length zero": safetensors_bytes(b"", bytes(4)),
    "offsets past the end": safetensors_bytes({"scale": _tensor("F32", [], 0, 4)}, bytes(2)),
    "end before start": safetensors_bytes({"scale": _tensor("F32", [], 4, 0)}, bytes(8)),
    "overlapping offsets": safetensors_bytes(
        {"scale": _tensor("F32", [], 0, 4), "other": _tensor("F32", [], 2, 6)}, bytes(8)
    ),
    "size does not match the shape": safetensors_bytes(
        {"scale": _tensor("F32", [4], 0, 4)}, bytes(4)
    ),
    "unknown dtype": safetensors_bytes({"scale": _tensor("F33", [], 0, 4)}, bytes(4)),
    "dtype not a string": safetensors_bytes({"scale": _tensor(7, [], 0, 4)}, bytes(4)),
    "negative shape": safetensors_bytes({"scale": _tensor("F32", [-1], 0, 4)}, bytes(4)),
    "huge shape": safetensors_bytes({"scale": _tensor("F32", [2**62, 2**62], 0, 4)}, bytes(4)),
    "lowercase dtype": safetensors_bytes({"scale": _tensor("f32", [], 0, 4)}, bytes(4)),
    "dtype an object": safetensors_bytes({"scale": _tensor({"F32": 1}, [], 0, 4)}, bytes(4)),
    "metadata not strings": safetensors_bytes(
        {"__metadata__": {"a": 1}, "scale": _tensor("F32", [], 0, 4)}, bytes(4)
    ),
    "offsets not integers": safetensors_bytes(
        {"scale": {"dtype": "F32", "shape": [], "data_offsets": ["0", "4"]}}, bytes(4)
    ),
    "header not json": safetensors_bytes(b"{not json", bytes(4)),
    "header not utf-8": safetensors_bytes(b'{"\xff": 1}', bytes(4)),
    "header a list": safetensors_bytes(b"[]", bytes(4)),
    "header nested deeply": safetensors_bytes(b"[" * 100_000 + b"]" * 100_000, bytes(4)),
    "truncated in the length": struct.pack("<Q", 20)[:5],
    "truncated in the header": safetensors_bytes({"scale": _tensor("F32", [], 0, 4)}, bytes(4))[
        :20
    ],
    "empty file": b"",
    "not safetensors at all": b"\x80\x04\x95PICKLE" + bytes(100),
    "a zip file": b"PK\x03\x04" + bytes(60),
}


# -- ONNX --------------------------------------------------------------------------------

# Where a hostile ONNX tensor may say its bytes are.
HOSTILE_LOCATIONS = (
    "/etc/passwd",
    "/proc/self/environ",
    "../outside.bin",
    "../../../../../../etc/passwd",
    "sub/../../outside.bin",
    "*/_ORT_MEM_ADDR_/*",
    "not-in-the-archive.bin",
    "C:\\Windows\\win.ini",
    "weights.bin\x00/etc/passwd",
)


def onnx_external_data_model(where: str, location: str, *, length: int = 16) -> Callable[[], bytes]:
    """An ONNX model (Add x + w, uint8[16]) whose tensor ``w`` says its bytes are at ``location``.

    ``where`` puts ``w`` in: ``initializer`` (graph), ``constant`` (a Constant node's value),
    ``subgraph`` (an initializer of an If branch) or ``sparse`` (a sparse initializer).
    Returns a builder so that ``onnx`` is imported only by tests that use it.
    """

    def build() -> bytes:
        from onnx import TensorProto, helper

        def external(name: str, n: int) -> TensorProto:
            tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[n])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", "0"), ("length", str(n))):
                tensor.external_data.add(key=key, value=value)
            return tensor

        x = helper.make_tensor_value_info("x", TensorProto.UINT8, [length])
        y = helper.make_tensor_value_info("y", TensorProto.UINT8, [length])
        inputs = [x]
        initializer = []
        if where == "initializer":
            nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
            initializer = [external("w", length)]
        elif where == "constant":
            nodes = [
                helper.make_node("Constant", [], ["w"], value=external("w", length)),
                helper.make_node("Add", ["x", "w"], ["y"]),
            ]
        elif where == "subgraph":
            then = helper.make_graph(
                [helper.make_node("Add", ["x", "w"], ["t"])],
                "then",
                [],
                [helper.make_tensor_value_info("t", TensorProto.UINT8, [length])],
                initializer=[external("w", length)],
            )
            other = helper.make_graph(
                [helper.make_node("Identity", ["x"], ["e"])],
                "else",
                [],
                [helper.make_tensor_value_info("e", TensorProto.UINT8, [length])],
            )
            inputs.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
            nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
        elif where == "sparse":
            nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
        else:
            raise ValueError(f"unknown place {where!r}")
        graph = helper.make_graph(nodes, "g", inputs, [y], initializer=initializer)
        if where == "sparse":
            indices = helper.make_tensor("wi", TensorProto.INT64, [4], [0, 1, 2, 3])
            graph.sparse_initializer.extend(
                [helper.make_sparse_tensor(external("w", 4), indices, [length])]
            )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return bytes(model.SerializeToString())

    return build
