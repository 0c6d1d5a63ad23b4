"""MD5 and SHA-1 hashers, with hashlib imported on the first one asked for.

hashlib's OpenSSL backend maps and initialises libcrypto at import, about
3.6 MiB resident, which a node that is never asked for a checksum (a PUT's
Content-MD5, the sidechannel's MD5 and SHA-1) never needs.  After the first
call the import is a ``sys.modules`` look-up, next to hashing a whole file."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import _Hash


def md5() -> _Hash:
    import hashlib

    return hashlib.md5()


def sha1() -> _Hash:
    import hashlib

    return hashlib.sha1()
