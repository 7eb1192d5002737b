"""server/rooms.py: the client-to-rooms index keeps python-socketio's room table exactly as the
library's own manager keeps it, for any sequence of joins, leaves, disconnects and closes.

Both managers are driven side by side through the same calls on a real python-socketio server;
after every step their tables, each client's rooms and the pending lists must agree, and the
index must list exactly the rooms the table holds. (The cost it removes is measured in
benchmarks/socket_rooms.py, not asserted here.)
"""

from __future__ import annotations

from typing import Any

import socketio
from hypothesis import given, settings
from hypothesis import strategies as st

from flashsale.server.rooms import RoomIndex

NAMESPACES = ("/", "/other")
ROOMS = ("customer:1", "customer:2", "stock")


class IndexedManager(RoomIndex, socketio.Manager):
    pass


def table(manager: Any) -> dict[Any, dict[Any, dict[str, str]]]:
    return {
        ns: {room: dict(members) for room, members in rooms.items()}
        for ns, rooms in manager.rooms.items()
    }


def index_from_table(manager: Any) -> dict[str, dict[str, set[Any]]]:
    found: dict[str, dict[str, set[Any]]] = {}
    for ns, rooms in manager.rooms.items():
        for room, members in rooms.items():
            for sid in members:
                found.setdefault(ns, {}).setdefault(sid, set()).add(room)
    return found


steps = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.integers(0, 5), st.sampled_from(NAMESPACES)),
        st.tuples(st.just("pre_connect"), st.integers(0, 5), st.sampled_from(NAMESPACES)),
        st.tuples(st.just("enter"), st.integers(0, 9), st.sampled_from(ROOMS)),
        st.tuples(st.just("leave"), st.integers(0, 9), st.sampled_from(ROOMS)),
        st.tuples(st.just("pre_disconnect"), st.integers(0, 9), st.none()),
        st.tuples(st.just("disconnect"), st.integers(0, 9), st.none()),
        st.tuples(st.just("close"), st.integers(0, 9), st.sampled_from(ROOMS)),
    ),
    max_size=40,
)


class Pair:
    """The library's manager and flashsale's, with the sids each handed out, in step."""

    def __init__(self) -> None:
        self.managers = (socketio.Manager(), IndexedManager())
        counter = iter(range(10**6))
        for manager in self.managers:
            server = socketio.Server(client_manager=manager)
            server.eio.generate_id = lambda: f"sid-{next(counter) // 2}"  # the same sid in both
        self.clients: list[tuple[str, str]] = []  # (sid, namespace), the same in both

    def call(self, method: str, *args: Any) -> list[Any]:
        results = []
        for manager in self.managers:
            try:
                results.append(("ok", getattr(manager, method)(*args)))
            except Exception as error:  # the library refuses some calls: both must
                results.append(("error", type(error).__name__))
        assert results[0] == results[1], (method, args, results)
        return [result for kind, result in results if kind == "ok"]

    def step(self, action: str, number: int, arg: Any) -> None:
        if action in ("connect", "pre_connect"):
            (sid, _) = self.call(action, f"eio-{number}", arg)
            if sid is not None and (sid, arg) not in self.clients:
                self.clients.append((sid, arg))
            return
        if not self.clients:
            return
        sid, namespace = self.clients[number % len(self.clients)]
        if action == "enter":
            self.call("basic_enter_room", sid, namespace, arg)
        elif action == "leave":
            self.call("basic_leave_room", sid, namespace, arg)
        elif action == "pre_disconnect":
            self.call("pre_disconnect", sid, namespace)
        elif action == "disconnect":
            self.call("basic_disconnect", sid, namespace)
        else:
            self.call("basic_close_room", arg, namespace)

    def check(self) -> None:
        library, ours = self.managers
        assert table(ours) == table(library)
        assert ours.pending_connect == library.pending_connect
        assert ours.pending_disconnect == library.pending_disconnect
        assert ours.rooms_of == index_from_table(ours)
        for sid, namespace in self.clients:
            assert sorted(ours.get_rooms(sid, namespace)) == sorted(
                library.get_rooms(sid, namespace)
            )


@settings(max_examples=400, deadline=None, derandomize=True)
@given(steps)
def test_the_index_keeps_the_table_exactly_as_python_socketio_does(steps: list[Any]) -> None:
    pair = Pair()
    for action, number, arg in steps:
        pair.step(action, number, arg)
        pair.check()


def test_a_disconnect_leaves_every_room_of_that_client_and_no_other() -> None:
    manager = IndexedManager()
    socketio.Server(client_manager=manager)
    sids = [manager.connect(f"eio-{i}", "/") for i in range(3)]
    for i, sid in enumerate(sids):
        manager.enter_room(sid, "/", f"customer:{i}")
        manager.enter_room(sid, "/", "stock")
    manager.disconnect(sids[1], "/")
    assert "customer:1" not in manager.rooms["/"]
    assert set(manager.rooms["/"]["stock"]) == {sids[0], sids[2]}
    assert sids[1] not in manager.rooms_of["/"]
    assert sorted(manager.get_rooms(sids[0], "/")) == sorted(["customer:0", "stock", sids[0]])
