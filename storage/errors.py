"""Storage errors. Every error names the file it is about, so an operator knows where to look."""


class StorageError(Exception):
    """Base class for everything the storage layer raises on purpose."""


class CorruptStoreError(StorageError):
    """On-disk data failed a check (CRC, magic, length, position) where it must be intact."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: corrupt at offset {offset}: {reason}")


class BadConfigFileError(StorageError):
    """A metadata file (topics, offsets, checkpoint) cannot be parsed or has the wrong shape."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class StoreFailedError(StorageError):
    """An fsync or write failed earlier. The store refuses all work: the node must crash and
    recover from disk, because after a failed fsync the page cache state is unknown."""


class MessageTooLargeError(StorageError):
    """A record does not fit in one segment (or exceeds the configured maximum)."""


class OffsetError(StorageError):
    """A caller asked for an offset that is not a record boundary or is out of range."""
