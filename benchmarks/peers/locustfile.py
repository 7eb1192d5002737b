"""The flashsale customer journey as a Locust scenario, for benchmarks/peers/compare.py.

One Locust user plays one customer per iteration, like `flashsale loadgen --tokenize raw`:
GET /session, POST /v1/tokens with a raw test card to the Stripe base /session names (as
Stripe.js would), a Socket.IO websocket connected with the customer's room token (waits for
`joined`), POST /charges with the token, then waits for its `charge_result` on the socket.

Locust's Socket.IO support is `locust.contrib.socketio`: its SocketIOUser holds one socket per
user for the user's lifetime, but every customer here needs its own socket (its own room token),
so each iteration opens a `locust.contrib.socketio.SocketIOClient` (which reports the connect to
Locust's stats). Locust reports socket events with response_time=0, so the time from the POST's
answer to the result, and the whole journey, are measured here and fired as request events
("result", "journey"), the way a Locust user would have to.

Run: locust -f benchmarks/peers/locustfile.py --headless --host http://127.0.0.1:5000 -u 20 -r 20
Users pace themselves to one journey per --pace seconds (env FLASHSALE_PACE_S, default 1).
"""

from __future__ import annotations

import os
import time
from typing import Any

import gevent
from gevent.event import AsyncResult
from locust import FastHttpUser, constant_pacing, task
from locust.contrib.socketio import SocketIOClient

PACE_S = float(os.environ.get("FLASHSALE_PACE_S", "1"))
RESULT_TIMEOUT_S = 30.0
CARD = {
    "card[number]": "4242424242424242",
    "card[exp_month]": "12",
    "card[exp_year]": "2034",
    "card[cvc]": "123",
}


class Customer(FastHttpUser):
    """One flash-sale customer per iteration; FastHttpUser is Locust's quickest HTTP client."""

    wait_time = constant_pacing(PACE_S)

    def fire(self, name: str, started: float, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type="FLASHSALE",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=exception,
            context={},
        )

    @task
    def checkout(self) -> None:
        journey_started = time.perf_counter()
        with self.client.get("/session", name="GET /session", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"session {response.status_code}")
                return
            session: dict[str, Any] = response.json()
        with self.client.post(
            f"{session['stripe_api_base']}/v1/tokens",
            data=CARD,
            headers={"Authorization": f"Bearer {session['publishable_key']}"},
            name="POST /v1/tokens",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"tokens {response.status_code}")
                return
            token = response.json()["id"]
        joined: AsyncResult = AsyncResult()
        result: AsyncResult = AsyncResult()
        sio = SocketIOClient(self.environment.events.request, reconnection=False)
        sio.on("joined", lambda data: joined.set(data))
        sio.on("charge_result", lambda data: result.set(data))
        try:
            sio.connect(
                self.host,
                auth={"room_token": session["room_token"]},
                transports=["websocket"],
                wait_timeout=10,
            )
            joined.get(timeout=10)
            with self.client.post(
                "/charges",
                json={
                    "customer_id": session["customer_id"],
                    "room_token": session["room_token"],
                    "token": token,
                },
                name="POST /charges",
                catch_response=True,
            ) as response:
                if response.status_code not in (200, 202):
                    response.failure(f"charges {response.status_code}")
                    return
            posted = time.perf_counter()
            try:
                outcome = result.get(timeout=RESULT_TIMEOUT_S)
            except gevent.Timeout as error:
                self.fire("result", posted, error)
                return
            failed = None if outcome.get("status") == "succeeded" else RuntimeError(str(outcome))
            self.fire("result", posted, failed)
            self.fire("journey", journey_started, failed)
        except Exception as error:  # a refused or dropped socket counts as a failed journey
            self.fire("journey", journey_started, error)
        finally:
            sio.disconnect()
