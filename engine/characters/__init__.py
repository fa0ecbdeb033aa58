"""Characters: the profile + identity record, the `.flx` file format and the SQLite library.

Public API (import from here): `Character`, `CharacterProfile`, `load_profile`, `CharacterLibrary`,
`read_flx`, `write_flx`, `inspect_flx`, and the operations in `service` (`create_character`, `reembed`,
`make_variant`, `identity_reference`, ...).
"""

from .flx_format import LoadedFlx, from_bytes, inspect_flx, read_flx, to_bytes, write_flx
from .library import CharacterLibrary, CharacterSummary, ImportResult, VersionInfo
from .reactor import export_reactor, import_reactor
from .schema import AnchorDetail, Character, CharacterProfile, EncoderEmbeddings, ReferenceRecord, load_profile
from .service import (
    RefSpec,
    attach_lora,
    auto_archive,
    create_character,
    create_in_library,
    identity_reference,
    identity_reference_from_library,
    make_variant,
    open_library,
    parse_ref_spec,
    reembed,
    reembed_in_library,
    update_profile,
    update_profile_in_library,
    variant_in_library,
)

__all__ = [
    "AnchorDetail", "Character", "CharacterLibrary", "CharacterProfile", "CharacterSummary", "EncoderEmbeddings",
    "ImportResult", "LoadedFlx", "RefSpec", "ReferenceRecord", "VersionInfo", "attach_lora", "auto_archive", "create_character",
    "create_in_library", "export_reactor", "from_bytes", "import_reactor", "identity_reference", "identity_reference_from_library", "inspect_flx",
    "load_profile", "make_variant", "open_library", "parse_ref_spec", "read_flx", "reembed", "reembed_in_library",
    "to_bytes", "update_profile", "update_profile_in_library", "variant_in_library", "write_flx",
]  # fmt: skip
