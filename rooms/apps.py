from django.apps import AppConfig


class RoomsConfig(AppConfig):
    name = "rooms"
    verbose_name = "Rooms and calls"

    def ready(self) -> None:
        from rooms import (
            emails,  # noqa: F401 - registers the booking emails' renderer
            receivers,  # noqa: F401 - connects billing's signals
        )
