from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path

from accounts import views as accounts_views
from config import errors
from config.health import healthz


def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """Browsers ask for /favicon.ico whatever the page links; send them to the SVG icon (its
    static URL carries the content hash in production, so it is resolved per request)."""
    return HttpResponseRedirect(static("favicon.svg"))


urlpatterns = [
    path("", accounts_views.home, name="home"),
    path("favicon.ico", favicon, name="favicon"),
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
