"""How a customer's state is stored in the state table and its changelog: CustomerState as
JSON, compressed by zstd with a dictionary of what every state holds (field names, targets,
systems), about a quarter of the JSON. With a million customers in memory that is the
difference between about 2 GiB and a few hundred MiB.

The dictionary (`customer-state-v2.zdict`, a state whose values were blanked) is part of the
format, named by the first byte of every stored state. A new dictionary gets a new file and
byte. Version 1 held the per-field echo memory that `sync.target_writes` replaced; its states
are not read (a changelog on the embedded broker never outlives the broker).
"""

from __future__ import annotations

from pathlib import Path

import zstandard

from crmsync.domain.decide import CustomerState

__all__ = ["pack", "unpack"]

_V2 = 2
_dictionary = zstandard.ZstdCompressionDict(
    (Path(__file__).with_name("customer-state-v2.zdict")).read_bytes(),
    dict_type=zstandard.DICT_TYPE_RAWCONTENT,
)
_dictionary.precompute_compress(level=3)
_compressor = zstandard.ZstdCompressor(dict_data=_dictionary, write_checksum=False)
_decompressor = zstandard.ZstdDecompressor(dict_data=_dictionary)


def pack(state: CustomerState) -> bytes:
    return bytes([_V2]) + _compressor.compress(state.model_dump_json().encode())


def unpack(stored: bytes) -> CustomerState:
    if stored[:1] == b"{":  # stored before compression
        return CustomerState.model_validate_json(stored)
    if stored[0] != _V2:
        raise ValueError(f"customer state in an unknown format ({stored[0]})")
    return CustomerState.model_validate_json(_decompressor.decompress(stored[1:]))
