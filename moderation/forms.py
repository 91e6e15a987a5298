from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django import forms

from accounts.models import User
from moderation.models import DisputeReason, ReportCategory
from rooms.models import Room, RoomKind, Seat, SeatState

# A client chooses what went wrong; a chargeback is the bank's, never the client's choice.
CLIENT_DISPUTE_REASONS = [("", "Choose what went wrong")] + [
    (value, label) for value, label in DisputeReason.choices if value != DisputeReason.CHARGEBACK
]


@dataclass(frozen=True)
class SessionPeople:
    """Whom someone in a session may report or block: by default the other side (a client's
    expert, the client of a private session's expert); the expert of a group session picks
    one of its clients."""

    is_expert: bool
    other: User | None
    choices: list[User] = field(default_factory=list)


def session_people(room: Room, viewer: User) -> SessionPeople | None:
    """None when `viewer` is neither the room's expert nor a client who booked a seat in it
    (in any state: someone who was in the call stays able to report it)."""
    if room.expert_id == viewer.pk:
        seats = Seat.objects.filter(room=room).select_related("client").order_by("-pk")
        if room.kind == RoomKind.PRIVATE:
            seat = seats.filter(state=SeatState.CONFIRMED).first() or seats.first()
            return SessionPeople(is_expert=True, other=seat.client if seat else None)
        clients = {s.client_id: s.client for s in seats.filter(state=SeatState.CONFIRMED)}
        choices = sorted(clients.values(), key=lambda user: (user.display_name, user.pk))
        return SessionPeople(is_expert=True, other=None, choices=choices)
    if Seat.objects.filter(room=room, client=viewer).exists():
        return SessionPeople(is_expert=False, other=room.expert)
    return None


class _AboutSomeone(forms.Form):
    """A form about one person of a session: with `choices`, a `user` select to pick them."""

    person_label: ClassVar[str] = ""
    person_blank: ClassVar[str] = ""
    person_required: ClassVar[bool] = False

    def __init__(self, *args: Any, choices: Sequence[User] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.people = {person.pk: person for person in choices}
        if choices:
            self.fields["user"] = forms.TypedChoiceField(
                label=self.person_label,
                choices=[("", self.person_blank)]
                + [(person.pk, person.display_name) for person in choices],
                coerce=int,
                empty_value=None,
                required=self.person_required,
                error_messages={
                    "required": self.person_blank + ".",
                    "invalid_choice": "That person was not a client of this session.",
                },
            )
            self.order_fields(["user"])

    def person(self) -> User | None:
        """The person chosen, once the form is valid (None: nobody was chosen)."""
        chosen = self.cleaned_data.get("user")
        return self.people.get(chosen) if chosen is not None else None


class ReportForm(_AboutSomeone):
    person_label = "About whom"
    person_blank = "The session in general"

    category = forms.ChoiceField(label="What happened", choices=ReportCategory.choices)
    text = forms.CharField(
        label="Tell us more",
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Staff read every report. Say what happened and when in the call.",
    )


class BlockForm(_AboutSomeone):
    person_label = "Whom to block"
    person_blank = "Choose which client to block"
    person_required = True

    reason = forms.CharField(
        label="Why (optional; only Parley staff read it)",
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class DisputeForm(forms.Form):
    reason = forms.ChoiceField(label="What went wrong", choices=CLIENT_DISPUTE_REASONS)
    text = forms.CharField(
        label="What happened",
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Staff decide from what you write: say what was wrong and what you expect.",
    )


def form_problems(form: forms.Form) -> str:
    """A form's errors as one line a person can act on: "Field: what is wrong; …"."""
    return "; ".join(
        f"{form.fields[name].label}: {' '.join(str(e) for e in errors)}"
        if name in form.fields
        else " ".join(str(e) for e in errors)
        for name, errors in form.errors.items()
    )
