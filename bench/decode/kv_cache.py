"""The KV cache of ``bench.decode.generate.generate``: preallocated room for the decoded tokens, a prompt batch
prefilled in chunks into one set of buffers, and rows dropped once their samples are done.

``DynamicLayer`` (transformers' default) ``torch.cat``s every decoded token onto the whole cache, a
copy of every cached key and value per layer per step (12% of evaluation time). ``RoomyLayer``
reserves ``room`` positions past the prompt and writes each token in place; attention gets views of
exactly the filled length, the same values and shapes as the concatenated tensors.

``KVRooms`` holds those buffers for a whole prompt batch, so the prompt can be prefilled ``rows`` by
``rows`` (``chunk_cache``: each chunk's layers write into their rows of the shared buffers, no copy)
and decoded as one batch afterwards (``batch_cache``). ``RoomyLayer.batch_select_indices`` keeps only
the rows still decoding (``Cache.batch_select_indices`` calls it on every layer).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class RoomyLayer(DynamicLayer):
    """One layer's keys and values [B, heads, filled, d] as views into [B, heads, prompt + room, d]
    buffers: rows ``rows`` of layer ``index``'s buffers in ``rooms`` (allocated by the first prefill
    chunk that reaches that layer), or, built by ``over``, buffers that already hold the prompt."""

    def __init__(self, rooms: "KVRooms | None" = None, index: int = 0, rows: slice | None = None):
        super().__init__()
        self._rooms, self._index, self._rows = rooms, index, rows
        self.filled = 0

    @classmethod
    def over(cls, keys: torch.Tensor, values: torch.Tensor, filled: int) -> "RoomyLayer":
        """A layer whose buffers (already holding ``filled`` positions) are ``keys`` / ``values``."""
        layer = cls()
        layer.lazy_initialization(keys, values)
        layer._room_k, layer._room_v, layer.filled = keys, values, filled
        layer.keys, layer.values = keys[..., :filled, :], values[..., :filled, :]
        return layer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            k, v = self._rooms.buffers(self._index, key_states)
            self._room_k, self._room_v = k[self._rows], v[self._rows]
        end = self.filled + key_states.shape[-2]
        if end > self._room_k.shape[-2]:  # out of room: keep growing like DynamicLayer
            self._room_k = torch.cat([self._room_k[..., :self.filled, :], key_states], dim=-2)
            self._room_v = torch.cat([self._room_v[..., :self.filled, :], value_states], dim=-2)
        else:
            self._room_k[..., self.filled:end, :].copy_(key_states)
            self._room_v[..., self.filled:end, :].copy_(value_states)
        self.filled = end
        self.keys, self.values = self._room_k[..., :end, :], self._room_v[..., :end, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only rows ``indices`` (the samples still decoding): one gather of the buffers, after
        which every step reads and writes that many fewer rows."""
        self._room_k = self._room_k.index_select(0, indices)
        self._room_v = self._room_v.index_select(0, indices)
        self.keys, self.values = self._room_k[..., :self.filled, :], self._room_v[..., :self.filled, :]


class KVRooms:
    """Per layer, one [batch, heads, prompt + room, d] key and value buffer for a prompt batch that is
    prefilled in chunks of rows and then decoded as a whole."""

    def __init__(self, batch: int, room: int):
        self.batch, self.room = batch, room
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.filled: int | None = None

    def buffers(self, index: int, key_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self.keys:
            _, h, n, d = key_states.shape
            self.keys[index] = key_states.new_empty(self.batch, h, n + self.room, d)
            self.values[index] = key_states.new_empty(self.batch, h, n + self.room, d)
            self.filled = n
        return self.keys[index], self.values[index]

    def chunk_cache(self, rows: slice) -> Cache:
        """The cache one prefill chunk (rows ``rows`` of the batch) runs with."""
        # transformers appends a layer per new layer index, in order: the new layer's index is the count so far
        cache = Cache(layer_class_to_replicate=lambda: RoomyLayer(self, len(cache.layers), rows))
        return cache

    def batch_cache(self) -> Cache:
        """The cache of the whole batch once every chunk has been prefilled."""
        if self.filled is None:
            raise RuntimeError("no chunk has been prefilled")
        return Cache(layers=[RoomyLayer.over(self.keys[i], self.values[i], self.filled)
                             for i in sorted(self.keys)])
