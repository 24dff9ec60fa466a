"""Tool metadata (MCP `title`, `annotations`, `outputSchema`, `execution`): a record of
its own, `ToolMetadata`, signed by the tool's provider and naming the announcement
version it belongs to, replicated in a document of its own (`registry-meta`) beside the
registry. The registry's view joins each entry with the metadata of its version
(`crdt.registry`).

Why a document of its own: nodes that predate metadata hold only the registry document.
Inside it, a record they cannot verify was dropped by each of their compactions and
written back by every newer node after the epoch switch, concurrently (one Yjs item per
key per newer node), which could re-cross the older node's compaction trigger at once:
it compacted at every upkeep tick and every node fetched every new epoch whole. A
message for a document a node does not hold is refused whole by it (`UnknownDocument`,
counted, logged at debug level), so older nodes never hold metadata: their registry
document carries exactly what they verify. Metadata reaches newer nodes from newer
nodes only; a newer node linked to the mesh only through older ones gets the tools
without their metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from vsmcp.crdt.errors import InvalidValue, MetadataTooLarge
from vsmcp.crdt.replica import Checked, VerifiedDoc
from vsmcp.crdt.signing import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from vsmcp.crdt.values import MAX_SAFE_INT, dump_json, load_json_object

# A tool's title, annotations, output schema and execution, as canonical JSON: larger
# ones are refused on receipt (and dropped, counted, by the announcer).
MAX_TOOL_METADATA_BYTES = 16 * 1024
MAX_TOOL_NAME_CHARS = 256
# The largest `ToolMetadata` blob: the metadata, a name of 256 four-byte characters, the
# provider key, integers, msgpack headers and the signature. Larger ones are refused
# before decoding.
MAX_TOOL_METADATA_BLOB_BYTES = (
    MAX_TOOL_METADATA_BYTES + 4 * MAX_TOOL_NAME_CHARS + PUBLIC_KEY_BYTES + SIGNATURE_BYTES + 64
)
METADATA_DOC_NAME = "registry-meta"

_Key = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
_Ms = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
ToolName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOOL_NAME_CHARS)]
# At most as many characters as the cap has bytes: a longer text is refused while it is
# decoded (a shorter one may still be over the cap in bytes: `_check_metadata_size`).
MetadataText = Annotated[str, msgspec.Meta(max_length=MAX_TOOL_METADATA_BYTES)]


class ToolMetadata(msgspec.Struct, frozen=True, array_like=True, tag=3):
    """Signed by `provider`: the MCP metadata of its announcement `version` of `name`
    (canonical JSON of an object with the tool's `title`, `annotations`, `outputSchema`,
    `execution`)."""

    provider: _Key
    name: ToolName
    version: _Ms
    expires_at_ms: _Ms
    metadata: MetadataText


_decoder: msgspec.msgpack.Decoder[ToolMetadata] = msgspec.msgpack.Decoder(ToolMetadata)
_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class DescribedTool:
    """A verified `ToolMetadata`."""

    provider: bytes
    name: str
    version: int
    metadata: dict[str, Any]


def entry_key(provider: bytes, name: str) -> str:
    """The key of `provider`'s tool `name`, in the registry and in the metadata doc."""
    return f"{provider.hex()}/{name}"


class ToolMetadataDoc(VerifiedDoc[DescribedTool, DescribedTool]):
    """The replicated `ToolMetadata` records, one per tool (the newest version's)."""

    domain = b"vsmcp/crdt/v1/registry-meta\n"
    max_blob_bytes = MAX_TOOL_METADATA_BLOB_BYTES

    def __init__(self, name: str = METADATA_DOC_NAME, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)

    def _check(self, payload: bytes) -> Checked[DescribedTool]:
        record = _decoder.decode(payload)
        if _encoder.encode(record) != payload:
            raise InvalidValue("tool metadata payload is not canonical")
        described = DescribedTool(
            record.provider, record.name, record.version, load_metadata(record.metadata)
        )
        key = entry_key(record.provider, record.name)
        return Checked(
            key, record.provider, described, (record.version, 0), record.expires_at_ms, True
        )

    def _view_of(self, record: DescribedTool) -> DescribedTool:
        return record

    def payload(self, record: ToolMetadata) -> bytes:
        """The one encoding of `record` that is signed and accepted."""
        return _encoder.encode(record)


def dump_metadata(metadata: Mapping[str, Any] | None) -> str:
    """Canonical JSON of `metadata` ("" for none); MetadataTooLarge over the cap."""
    if not metadata:
        return ""
    text = dump_json(dict(metadata), what="metadata")
    _check_metadata_size(text)
    return text


def load_metadata(text: str) -> dict[str, Any]:
    if not text:
        return {}
    _check_metadata_size(text)
    return load_json_object(text, what="metadata")


def _check_metadata_size(text: str) -> None:
    size = len(text.encode())
    if size > MAX_TOOL_METADATA_BYTES:
        raise MetadataTooLarge(f"metadata: {size} bytes of JSON, over {MAX_TOOL_METADATA_BYTES}")
