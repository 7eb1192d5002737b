"""The Celery tasks: create_charge (call Stripe, store, release, notify) and process_response
(the store-and-notify part again, with retries, when create_charge could not do it)."""

from __future__ import annotations

import dataclasses
import logging
import random
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import redis
import stripe
from celery import Celery, Task

from flashsale.core import events, jobs, orders, payments, rate_budget, store
from flashsale.core.payments import ChargeOutcome
from flashsale.errors import InvalidTransition, OrderNotFound, StripeAuthError, StripeUnavailable
from flashsale.settings import Settings
from flashsale.worker.notify import Notifier, make_notifier

log = logging.getLogger("flashsale.worker")

# Infrastructure hiccups (our Redis, the server's /notify) are retried like Stripe outages;
# with acks_late an unhandled exception would ack the message and strand the order as pending.
INFRASTRUCTURE_ERRORS = (redis.RedisError, httpx.HTTPError)
# A message no retry can fix (an order hash missing fields or holding junk, an outcome that is
# not one): with acks_late an exception would be acked anyway, but as a traceback nobody reads.
# Named and logged once, the poison message is dropped; the order, if any, stays for reconcile.
POISON_ERRORS = (KeyError, ValueError, TypeError, OrderNotFound, InvalidTransition)
# A thread waits this long at most for its Stripe slot; past it the task comes back later.
BUDGET_MAX_WAIT_S = 5.0
# Stripe keeps an Idempotency-Key at least 24 hours: replays of an unanswered charge stop an
# hour before that (a replay after it would charge again), and the order is closed, as
# NO_ANSWER, a day after that.
REPLAY_WINDOW_S = 23 * 3600
CLOSE_AFTER_S = 48 * 3600
NO_ANSWER = orders.NO_STRIPE_ANSWER


@dataclass
class WorkerContext:
    """What every task in this worker process shares: clients are thread-safe and reused."""

    settings: Settings
    redis: redis.Redis
    stripe: stripe.StripeClient
    notifier: Notifier
    auth_failure_logged: threading.Event
    # The Stripe budget all workers share; None when off.
    budget: rate_budget.RateBudget | None = None

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        client = store.connect(settings.redis_url)
        return cls(
            settings=settings,
            redis=client,
            stripe=payments.make_client(settings),
            notifier=make_notifier(settings),
            auth_failure_logged=threading.Event(),
            budget=make_budget(settings, client),
        )


def say(line: str) -> None:
    print(f"flashsale worker: {line}", file=sys.stderr, flush=True)


def make_budget(settings: Settings, client: redis.Redis) -> rate_budget.RateBudget | None:
    """The shared Stripe budget --stripe-rate asks for; 'auto' is a share of --stripe-limit."""
    rate = rate_budget.parse_rate(settings.stripe_rate)
    if rate == "auto":
        rate = rate_budget.auto_rate(
            settings.stripe_mode, settings.stripe_limit, settings.stripe_endpoint_limit
        )
    # Printed, not logged: this runs before Celery configures logging, and operators need it.
    if not isinstance(rate, float):
        why = (
            "; give --stripe-limit to keep to a simulator's --rate-limit"
            if settings.stripe_mode == "simulator" and not settings.stripe_limit
            else ""
        )
        say(f"Stripe budget: off (each worker sends as fast as Stripe answers){why}")
        return None
    say(f"Stripe budget: {rate:.4g} requests/s shared by every worker on this Redis")
    return rate_budget.RateBudget(
        client,
        rate_budget.budget_key(settings.stripe_secret_key),
        rate,
        burst=max(1, int(rate / 10)),  # 100 ms worth at once, well inside Stripe's 1 s bucket
        max_wait_s=BUDGET_MAX_WAIT_S,
    )


def backoff_s(settings: Settings, retries: int) -> float:
    """Exponential backoff with jitter, so retrying workers do not stampede Stripe together."""
    ceiling = min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2**retries)
    return random.uniform(ceiling / 2, ceiling)


def register_tasks(app: Celery, context: WorkerContext) -> None:
    """Define the two tasks on app, bound to this process's clients and settings."""
    settings = context.settings

    def retry_later(task: Task, order_id: str, error: Exception) -> Exception:
        """Schedule the task again after a backoff, saying so: Celery's own retry line is off."""
        retries = task.request.retries
        countdown = backoff_s(settings, retries)
        if task.max_retries is not None and retries >= task.max_retries:
            # task.retry re-raises the error, and Celery logs the task's failure itself.
            log.warning("%s for order %s: no retries left: %s", task.name, order_id, error)
        else:
            log.warning(
                "%s for order %s: retry %d of %d in %.1fs: %s",
                task.name,
                order_id,
                retries + 1,
                task.max_retries,
                countdown,
                error,
            )
        return task.retry(countdown=countdown, exc=error)

    def store_and_notify(order_id: str, result: ChargeOutcome, sku: str | None) -> orders.Order:
        """Store the one final state, release stock if unsold, then tell the customer's room."""
        changed, order = orders.finalize(
            context.redis,
            order_id,
            result.status,
            charge_id=result.charge_id,
            code=result.code,
            decline_code=result.decline_code,
            message=result.message,
            sku=sku,
        )
        if changed:
            log.info("order %s %s %s", order_id, order.status, order.code or "")
            if order.released:
                context.notifier.stock_changed(order.sku)
        # Notify what is stored, not what this run computed: a rerun says the same thing.
        context.notifier.notify(order)
        return order

    def finish(order: orders.Order, outcome: ChargeOutcome) -> None:
        """Store and announce Stripe's answer in this task. Should our Redis fail (past the
        client's ride-out of a lost connection) or the server's /notify (one request), the
        process_response sub-task does it with retries and backoff, so the charge is never
        made again for it. (It always went to the sub-task: one more Celery message per
        checkout, for the rare hiccup; RESULTS.md 9a.)"""
        try:
            store_and_notify(order.order_id, outcome, order.sku)
        except INFRASTRUCTURE_ERRORS as error:
            log.warning(
                "order %s: storing Stripe's answer failed (%s); process_response retries it",
                order.order_id,
                error,
            )
            process_response.apply_async(
                queue=jobs.RESULTS_QUEUE,
                **jobs.publish_options(order.order_id, outcome.as_dict(), order.sku),
            )
        except POISON_ERRORS as error:
            log.error("dropping the outcome of order %r: %r", order.order_id, error)

    def settle_later(task: Task, order: orders.Order, error: Exception) -> str:
        """Stripe may have charged: keep the order pending (its unit held, the customer told
        pending) and ask Stripe again with the same idempotent request until it answers.

        A replay returns what Stripe committed, or makes the charge now if Stripe never got
        the first. Replays stop before Stripe forgets the Idempotency-Key (REPLAY_WINDOW_S);
        after CLOSE_AFTER_S the order is failed as stripe_no_answer, which reconcile lists.
        """
        age = time.time() - order.created_at
        if age > CLOSE_AFTER_S:
            store_and_notify(
                order.order_id,
                ChargeOutcome(
                    status=events.FAILED,
                    code=NO_ANSWER,
                    message="The payment service never confirmed this payment.",
                ),
                order.sku,
            )
            log.error("order %s closed without Stripe's answer after %.0fs", order.order_id, age)
            return NO_ANSWER
        if age > REPLAY_WINDOW_S:
            log.error(
                "order %s: no answer from Stripe and its Idempotency-Key is about to expire: "
                "not replayed, left pending for reconcile (%s)",
                order.order_id,
                error,
            )
            return "unknown"
        countdown = max(1.0, settings.retry_backoff_max_s)
        log.warning(
            "order %s: outcome unknown after %d tries (%s); it stays pending and its unit held; "
            "the same idempotent request goes again in %.0fs",
            order.order_id,
            task.request.retries + 1,
            error,
            countdown,
        )
        create_charge.apply_async(
            countdown=countdown,
            retries=settings.charge_max_retries,  # one try per round from now on
            **jobs.publish_options(order.order_id),
        )
        return "unknown"

    def await_customer(order: orders.Order, outcome: ChargeOutcome) -> str:
        """The card asks for 3D Secure: tell the customer's page (again, on a sweep: a page that
        reconnected is told on its join anyway) and leave the order pending. Stripe's event
        finishes it (server /stripe/webhook), or the sweeper's next run reads the PaymentIntent;
        one left unauthenticated past authentication_timeout is canceled and its unit released."""
        assert outcome.client_secret is not None
        if order.action_secret is None:
            orders.record_action(context.redis, order.order_id, outcome.client_secret)
            order = dataclasses.replace(order, action_secret=outcome.client_secret)
        age = time.time() - order.created_at
        if age > settings.authentication_timeout_s:
            final = payments.cancel_abandoned(context.stripe, outcome.client_secret)
            if final.final:
                log.warning(
                    "order %s: 3D Secure not finished after %.0fs: %s",
                    order.order_id,
                    age,
                    final.code or final.status,
                )
                finish(order, final)
                return final.status
        context.notifier.action_required(order)
        return events.REQUIRES_ACTION

    @app.task(name=jobs.PROCESS_RESPONSE, bind=True, max_retries=settings.charge_max_retries)
    def process_response(
        self: Task, order_id: str, outcome: dict[str, Any], sku: str | None = None
    ) -> str:
        """Store the outcome create_charge got from Stripe and tell the room, with retries.

        sku is the order's, sent along so storing needs no read of the order first; messages
        queued before it was an argument come without it.
        """
        try:
            order = store_and_notify(order_id, ChargeOutcome.from_dict(outcome), sku)
        except INFRASTRUCTURE_ERRORS as error:
            raise retry_later(self, order_id, error) from error
        except POISON_ERRORS as error:
            log.error("dropping process_response for order %r: %r", order_id, error)
            return "dropped"
        return order.status

    @app.task(name=jobs.CREATE_CHARGE, bind=True, max_retries=settings.charge_max_retries)
    def create_charge(self: Task, order_id: str) -> str:
        """Charge the order at Stripe (idempotently), then hand the outcome to process_response."""
        try:
            try:
                order = orders.find_order(context.redis, order_id)
            except POISON_ERRORS as error:
                log.error("dropping create_charge: order %r is corrupted: %r", order_id, error)
                return "dropped"
            if order is None:
                log.error("order %s does not exist; nothing to charge", order_id)
                return "missing"
            if order.final:
                # Redelivered after its result was stored: make sure the room heard it.
                context.notifier.notify(order)
                return order.status
            if context.budget is not None:
                slot = context.budget.acquire()
                if not slot.granted:
                    # The shared budget is booked beyond our wait: not a Stripe failure, so come
                    # back once a slot frees up with the retry count (Stripe errors) unchanged.
                    create_charge.apply_async(
                        countdown=slot.wait_s * random.uniform(0.5, 1.0),
                        retries=self.request.retries,
                        **jobs.publish_options(order_id),
                    )
                    return "deferred"
            orders.record_attempt(context.redis, order_id)
        except INFRASTRUCTURE_ERRORS as error:
            raise retry_later(self, order_id, error) from error

        try:
            if context.auth_failure_logged.is_set():
                # The key is read once at start: after Stripe refused it, every call would be
                # refused too. Stop charging; each order fails at once with the same clear code.
                raise StripeAuthError("the secret key was refused earlier in this worker")
            outcome = (
                payments.current_intent(context.stripe, order.action_secret)
                if order.action_secret
                else payments.charge_order(context.stripe, order)
            )
            if outcome.status == events.REQUIRES_ACTION:
                return await_customer(order, outcome)
        except StripeAuthError as error:
            if not context.auth_failure_logged.is_set():
                context.auth_failure_logged.set()
                log.critical(
                    "STRIPE AUTHENTICATION FAILED, every charge fails until fixed: %s", error
                )
            outcome = ChargeOutcome(
                status=events.FAILED,
                code="authentication_error",
                message="The payment service is not configured correctly.",
            )
        except StripeUnavailable as error:
            unknown = order.outcome_unknown or not error.outcome_known
            if unknown and not order.outcome_unknown:
                orders.mark_outcome_unknown(context.redis, order_id)
            if self.request.retries < settings.charge_max_retries:
                raise retry_later(self, order_id, error) from error
            if unknown:
                return settle_later(self, order, error)
            # Every try was refused before Stripe did anything (429s, no connection): nothing
            # was charged, so failing the order is the truth.
            log.warning(
                "order %s failed after %d retries: %s", order_id, self.request.retries, error
            )
            outcome = ChargeOutcome(
                status=events.FAILED,
                code="stripe_unavailable",
                message=f"Payment service unavailable after {self.request.retries} retries.",
            )
        # Step 7 of the pipeline: store and announce the outcome (only that part is retried on
        # a storage or notify hiccup, by the sub-task, so a charge is never made again for it).
        finish(order, outcome)
        return outcome.status
