"""`ByteLRU`: recently used blobs kept in memory, bounded by their total size in bytes.

The relay keeps the blobs it served recently; the room client keeps the blobs it
fetched. Both use this one cache, so "how much memory blobs may take" means the same
thing on both sides.
"""

from __future__ import annotations

from collections import OrderedDict


class ByteLRU:
    """Least recently used first out, once the bytes held exceed `max_bytes`.

    An item larger than `max_item_bytes` (default: all of `max_bytes`) is not kept.
    """

    def __init__(self, max_bytes: int, max_item_bytes: int | None = None) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.max_item_bytes = self.max_bytes if max_item_bytes is None else min(int(max_item_bytes), self.max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self.bytes = 0
        """Bytes held now."""

    def get(self, key: str) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_item_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._items[key] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes and self._items:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= len(dropped)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
