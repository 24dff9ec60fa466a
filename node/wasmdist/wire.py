"""Wire codec of module fetches (no I/O): a WASM_CHUNK request asks a peer for `length`
bytes of module `sha256` from `offset`; the answer is RESULT with the bytes (fewer at the
end, none past it) or ERROR (`InvokeError`, reason `not_held`)."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import Meta

from vsmcp.node.wasmdist.model import SHA256_RE

# Bytes asked for per request: well under an envelope (`envelope.max_bytes`, 1 MiB by
# default), so a reply always fits whatever else shares its envelope.
CHUNK_BYTES: Final = 256 << 10
NOT_HELD: Final = "not_held"


class ChunkRequest(msgspec.Struct, array_like=True, frozen=True):
    sha256: Annotated[str, Meta(pattern=SHA256_RE.pattern)]
    offset: Annotated[int, Meta(ge=0, le=1 << 32)]
    length: Annotated[int, Meta(ge=1, le=CHUNK_BYTES)]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ChunkRequest)


def encode_request(request: ChunkRequest) -> bytes:
    return _encoder.encode(request)


def decode_request(payload: bytes) -> ChunkRequest | None:
    """The request, or None when the payload is not one."""
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
