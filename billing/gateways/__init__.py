"""Payment providers behind one interface; `gateway_for` picks the one a payment uses."""

from __future__ import annotations

from billing.gateways.base import Gateway


def gateway_for(provider: str) -> Gateway:
    if provider == "stripe":
        from billing.gateways.stripe import StripeGateway

        return StripeGateway()
    if provider == "local":
        from billing.gateways.local import LocalGateway

        return LocalGateway()
    raise ValueError(f"Unknown payment provider {provider!r}")
