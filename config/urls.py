from django.contrib import admin
from django.urls import include, path

from accounts import views as accounts_views
from config import errors
from config.health import healthz

urlpatterns = [
    path("", accounts_views.home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("", include("accounts.urls")),
    path("", include("rooms.urls")),
    path("", include("billing.urls")),
    path("", include("moderation.urls")),
]

handler400 = errors.bad_request
handler403 = errors.permission_denied
handler404 = errors.page_not_found
handler500 = errors.server_error
# allauth's rate limits answer with this too (allauth.core.internal.ratelimit.respond_429).
handler429 = errors.too_many_requests
