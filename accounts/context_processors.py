from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from accounts.selectors import expert_profile_of


def navigation(request: HttpRequest) -> dict[str, Any]:
    """What the navigation needs to show each role its own links."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_expert_profile": None}
    return {"nav_expert_profile": expert_profile_of(user)}
