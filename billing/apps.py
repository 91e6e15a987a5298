from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Registers billing's system checks (a test-card provider refused in production).
        from billing import checks  # noqa: F401
