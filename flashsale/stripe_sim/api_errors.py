"""Stripe-shaped API errors: one exception the handlers raise, rendered as Stripe's error body."""

from __future__ import annotations

DOC_URL = "https://stripe.com/docs/error-codes/"


class StripeApiError(Exception):
    """An error answer with Stripe's status, type, code and wording; never escapes as a 500."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        decline_code: str | None = None,
        charge: str | None = None,
        headers: dict[str, str] | None = None,
        with_param: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.decline_code = decline_code
        self.charge = charge
        self.headers = headers or {}
        # Card errors always name a param (None when Stripe has none) so callers can read it.
        self.with_param = with_param or param is not None

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = DOC_URL + self.code.replace("_", "-")
        if self.decline_code:
            error["decline_code"] = self.decline_code
        if self.with_param:
            error["param"] = self.param
        if self.charge:
            error["charge"] = self.charge
        return {"error": error}


def invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    """400 invalid_request_error, Stripe's answer to any malformed request."""
    return StripeApiError(400, message, param=param, code=code)


def missing(param: str) -> StripeApiError:
    return invalid(f"Missing required param: {param}.", param, "parameter_missing")


def unknown(param: str) -> StripeApiError:
    return invalid(f"Received unknown parameter: {param}", param, "parameter_unknown")


def no_such(kind: str, ident: str, param: str | None, status: int = 404) -> StripeApiError:
    return StripeApiError(
        status, f"No such {kind}: '{ident}'", param=param, code="resource_missing"
    )


def card_error(
    message: str,
    code: str,
    param: str | None = None,
    decline_code: str | None = None,
    charge: str | None = None,
) -> StripeApiError:
    """402 card_error, as for a decline or a card that fails validation at tokenization."""
    return StripeApiError(
        402,
        message,
        type="card_error",
        param=param,
        code=code,
        decline_code=decline_code,
        charge=charge,
        with_param=True,
    )
