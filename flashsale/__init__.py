"""flashsale: rehearse flash sales against an asynchronous Stripe charge pipeline."""

__version__ = "0.1.0"
