"""The Socket.IO client manager: python-socketio's Redis manager with an index from client to
rooms, so a disconnect costs the same with 10 or 10,000 customers connected.

python-socketio 5.18's BaseManager.basic_disconnect finds a client's rooms by copying and
scanning every room of the namespace, and get_rooms scans them all too. flashsale gives each
customer a room of its own, so N disconnects cost O(N^2): in the doors-open herd it was 14.7% of
the server's CPU samples, more than POST /charges (benchmarks/socket_rooms.py measures it).
The index is kept where every join and leave passes (basic_enter_room, basic_leave_room; the
methods a manager subclass overrides); the table itself stays python-socketio's.
"""

from __future__ import annotations

from typing import Any

import socketio


class RoomIndex:
    """A mixin for a python-socketio manager (list it first): which rooms each client is in,
    per namespace, kept beside the manager's own `rooms` table."""

    rooms: dict[Any, dict[Any, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # rooms_of[namespace][sid]: the rooms sid is in, None (the namespace's own) included.
        self.rooms_of: dict[str, dict[str, set[Any]]] = {}

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self.rooms_of.setdefault(namespace, {}).setdefault(sid, set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        clients = self.rooms_of.get(namespace)
        if clients is None or sid not in clients:
            return
        joined = clients[sid]
        joined.discard(room)
        if not joined:
            del clients[sid]
            if not clients:
                del self.rooms_of[namespace]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """BaseManager.basic_disconnect, with the client's rooms taken from the index."""
        if namespace not in self.rooms:
            return
        for room in list(self.rooms_of.get(namespace, {}).get(sid, ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        """The rooms a client is in, the namespace's own (None) left out, as the base does."""
        return [room for room in self.rooms_of.get(namespace, {}).get(sid, ()) if room is not None]


class RedisManager(RoomIndex, socketio.RedisManager):
    """The server's client manager: rooms and emits across processes through Redis pub/sub."""
