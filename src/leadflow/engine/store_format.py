"""The store's format and encryption at rest, checked when the engine opens a store.

A store written in another format is refused, naming ``leadflow db migrate`` for an older
one (engine/migration.py builds the newer format from its events); a store opened with a
cipher key that does not match how it was created is refused before any row is read.
"""

from __future__ import annotations

from eventsourcing.persistence import Cipher

from leadflow.domain import LeadflowError
from leadflow.domain.vocabulary import CHAINED_SINCE
from leadflow.store.recorders import STORE_VERSION, RecordIdIndex


class StoreVersionError(LeadflowError):
    """The event store is in a format this leadflow does not write: migrate (or upgrade)."""

    reason = "store_version"


def check_store_version(indexes: RecordIdIndex) -> None:
    """Refuse a store written in another format (``leadflow db migrate`` upgrades an older
    one); mark a new, empty one as written in this format."""
    version = indexes.store_version()
    if version == STORE_VERSION:
        return
    if version is None and not indexes.has_events():
        indexes.set_meta(CHAINED_SINCE, "0")  # born chained: every row must carry a link
        indexes.set_store_version(STORE_VERSION)
        return
    if version is not None and version > STORE_VERSION:
        raise StoreVersionError(f"this event store is in format {version}, newer than this "
                                f"leadflow understands ({STORE_VERSION}): upgrade leadflow")
    raise StoreVersionError(
        f"this event store was written in format {version or 1} by an earlier leadflow; "
        f"run `leadflow db migrate` once to bring it to format {STORE_VERSION} (it keeps "
        "every event and builds the timer index and the bookkeeping tables, and re-keys the "
        "identity table by keyed hashes)")


#: Metadata: a value the store's cipher encrypted when the store was created ("" when it was
#: created without one), so a store opened with a wrong, missing or needless key is named.
CIPHER_CHECK = "cipher_check"
_CHECK_PLAINTEXT = b"leadflow-cipher-check"


class StoreCipherError(LeadflowError):
    """The store is encrypted at rest and the configured cipher key does not open it (or
    the other way round)."""

    reason = "store_cipher"


def check_cipher(indexes: RecordIdIndex, cipher: Cipher | None) -> None:
    """Refuse to work on a store whose encryption at rest does not match the configuration:
    without it, every row would read as garbage and be reported as damage."""
    check = indexes.meta(CIPHER_CHECK)
    if check is None:
        if indexes.has_events():
            return  # a store from before the check: nothing to compare with
        check = cipher.encrypt(_CHECK_PLAINTEXT).hex() if cipher else ""
        indexes.set_meta(CIPHER_CHECK, check)
        return
    if not check:
        if cipher is not None:
            raise StoreCipherError(
                "this event store is not encrypted at rest, but CIPHER_KEY is set: unset it "
                "(an existing store is not re-encrypted)")
        return
    if cipher is None:
        raise StoreCipherError("this event store is encrypted at rest: set CIPHER_KEY (and "
                               "CIPHER_TOPIC if it was not the default AES-GCM cipher)")
    try:
        opened = cipher.decrypt(bytes.fromhex(check))
    except Exception as exc:  # the cipher's refusal (cryptography's InvalidTag, ...)
        raise StoreCipherError("CIPHER_KEY is not the key this event store was encrypted "
                               f"with ({type(exc).__name__})") from exc
    if opened != _CHECK_PLAINTEXT:
        raise StoreCipherError("CIPHER_KEY is not the key this event store was encrypted with")
