"""One live snapshot as a catalog lists it (``Repository.snapshots``, ``newest_first``): the cheap fields come from
the record inlined in its catalog entry; the file list is loaded only when ``manifest`` is asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmdr.repo.manifest import Manifest


@dataclass
class SnapshotInfo:
    """One live snapshot as the catalog lists it: cheap fields from the inline record; ``manifest`` (with the file
    list) is loaded on first use."""

    id: str
    record: dict[str, Any]
    seq: int
    stored: float | None = None
    future: bool = False
    fork: bool = False
    # its place among all the snapshots the bundle's catalog has listed, forgotten ones included (0: the first):
    # forgetting does not renumber, so retention's keep_every keeps the same snapshots from run to run
    number: int | None = None
    _repo: Any = field(default=None, repr=False)  # the Repository that lists it (loads the manifest)
    _manifest: Manifest | None = field(default=None, repr=False)

    @property
    def short(self) -> str:
        return self.id[:12]

    @property
    def bundle(self) -> str:
        return self.record["bundle"]

    @property
    def created(self) -> str:
        return self.record["created"]

    @property
    def taken_at(self) -> float:
        """When the snapshot's data is from, in seconds since the epoch, never later than the store received its
        entry: a writer whose clock runs ahead cannot make an old snapshot look fresh (RPO checks use this)."""
        from llmdr.repo.manifest import parse_utc

        try:
            created = parse_utc(self.created).timestamp()
        except (TypeError, ValueError):
            created = float("inf")
        return min(created, self.stored) if self.stored is not None else created

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.record.get("tags") or {})

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            assert self._repo is not None
            self._manifest = self._repo.load_manifest(self.id)
        return self._manifest
