"""Parley settings, read from the environment.

With no environment at all this is the embedded laptop setup that `make run` serves: SQLite
under var/, the in-memory channel layer, a file-system Celery broker, console email and the
local payment provider. Each production switch (DATABASE_URL, REDIS_URL, Stripe keys, TURN,
ALLOWED_HOSTS, SECRET_KEY, HTTPS) replaces one embedded part; docs/ARCHITECTURE.md lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_choice, env_int, env_list, env_str

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PARLEY_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", default=False)

_DEV_SECRET_KEY = "django-insecure-parley-local-development-only-never-deploy-this-key"  # noqa: S105 (DEBUG only)
SECRET_KEY = env_str("SECRET_KEY") or (_DEV_SECRET_KEY if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
# The public origin of the site, used in emails and links that leave the request cycle.
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    # daphne first: it replaces runserver with an ASGI server that also speaks WebSocket.
    "daphne",
    "whitenoise.runserver_nostatic",
    "config.apps.ParleyAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "accounts",
    "billing",
    "rooms",
    "moderation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "accounts.middleware.TimezoneMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Turns a rate limit's refusal into RATELIMIT_VIEW's 429 (config/ratelimits.py).
    "django_ratelimit.middleware.RatelimitMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.navigation",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# Threads the signaling sockets' database calls run on, per Daphne process (admission, closes,
# media reports; heartbeats have a flush thread of their own): as many as may usefully wait on
# PostgreSQL at once, 4, or fewer when the pool is smaller (docs/ARCHITECTURE.md, The socket's
# database path). 0 (unset) fits them to the pool.
SOCKET_DATABASE_THREADS = env_int("SOCKET_DATABASE_THREADS", 0)
if SOCKET_DATABASE_THREADS < 0:
    raise ImproperlyConfigured("SOCKET_DATABASE_THREADS must be at least 1 (or 0: fit the pool).")
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    # Persistent connections and ASGI do not mix (each request's sync code may run in a thread
    # of its own, and a connection kept per thread leaks), so connections close at the end of
    # each request or consumer call; health checks catch dead ones.
    DATABASES: dict[str, Any] = {
        "default": dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)
    }
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        options = DATABASES["default"].setdefault("OPTIONS", {})
        # A database that does not answer must fail a request (and /healthz) quickly.
        options.setdefault("connect_timeout", 5)
        # Django's cursors never prepare (they bind on the client); this lets the hot paths'
        # own statements be prepared (accounts.sql.cursor_prepared): without a threshold
        # psycopg prepares nothing, even when asked to.
        options.setdefault("prepare_threshold", 5)
        # "Closing" returns the connection to a pool instead: opening a PostgreSQL connection
        # costs more than a heartbeat's UPDATE, and a Daphne process makes one database call
        # per socket every 5 s (bench/signaling.py). Sized per process; the server's
        # max_connections must cover every process's max.
        if env_bool("DATABASE_POOL", default=True):
            options["pool"] = {
                "min_size": env_int("DATABASE_POOL_MIN", 2),
                "max_size": env_int("DATABASE_POOL_MAX", 10),
                # As long as connecting may take (connect_timeout above).
                "timeout": 5,
            }
            # Django's backend, whose pool checks each connection before lending it with a
            # check that replaces every idle connection once one is found dead
            # (config/postgresql/base.py).
            DATABASES["default"]["ENGINE"] = "config.postgresql"
            # Every thread that may hold a connection at once gets one without waiting: the
            # sockets' database threads, the heartbeat flush, asgiref's one thread-sensitive
            # thread (the socket's session and user), and at least one HTTP request
            # (docs/ARCHITECTURE.md, The socket's database path).
            spare = options["pool"]["max_size"] - 3
            SOCKET_DATABASE_THREADS = SOCKET_DATABASE_THREADS or max(1, min(4, spare))
            if SOCKET_DATABASE_THREADS > spare:
                raise ImproperlyConfigured(
                    f"DATABASE_POOL_MAX must be at least SOCKET_DATABASE_THREADS + 3 "
                    f"({SOCKET_DATABASE_THREADS + 3}): the sockets' threads would wait on the pool."
                )
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "parley.sqlite3",
            "OPTIONS": {
                # Daphne and the Celery worker write to the same file: WAL lets readers run
                # beside a writer, IMMEDIATE makes writers queue instead of failing mid-way.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
SOCKET_DATABASE_THREADS = SOCKET_DATABASE_THREADS or 4
# Each request is one transaction: a view that fails half-way (a mail server down in the
# middle of signup, say) leaves nothing half-written. Emails and broadcasts go out after commit.
DATABASES["default"]["ATOMIC_REQUESTS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, Celery broker, cache ---------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    # Pub/sub relays a message in about half the time of the list-based layer
    # (docs/OPERATIONS.md, Channels); messages that must arrive are recoverable from the
    # database anyway.
    CHANNEL_LAYERS: dict[str, Any] = {
        "default": {
            # channels_redis's pub/sub layer, its publishes not waiting for each other
            # (rooms/layers.py: a relayed signal no longer queues behind every other one).
            "BACKEND": "rooms.layers.RelayPubSubChannelLayer",
            # Pub/sub channels are server-wide, not per Redis database: deployments (and test
            # runs) sharing one Redis server keep apart by prefix. CHANNEL_REDIS_URLS (comma-
            # separated) shards the layer over several Redis servers, channels-redis's own way:
            # each channel and group lives on the server its name hashes to (no Redis Cluster).
            "CONFIG": {
                "hosts": env_list("CHANNEL_REDIS_URLS") or [REDIS_URL],
                "prefix": env_str("CHANNEL_LAYER_PREFIX", "parley"),
            },
        }
    }
    CACHES: dict[str, Any] = {
        "default": {
            # Holds only what may be lost (rate limits, used TOTP codes): a Redis that is down
            # makes it answer "empty" instead of failing the sign-in (config/cache.py).
            "BACKEND": "config.cache.FailOpenRedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                # A Redis that hangs must cost a request a moment, not the request.
                "socket_connect_timeout": 0.5,
                "socket_timeout": 0.5,
                "RETRY_AFTER_SECONDS": env_int("CACHE_RETRY_AFTER_SECONDS", 5),
            },
        }
    }
else:
    if env_list("CHANNEL_REDIS_URLS"):
        # Without REDIS_URL the layer would silently be in-memory: one process's sockets only.
        raise ImproperlyConfigured("CHANNEL_REDIS_URLS needs REDIS_URL (the broker and cache).")
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://localhost//")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery" / "queue"
    # Kombu's file-system transport expects its folders to exist.
    _queue_dir.mkdir(parents=True, exist_ok=True)
    (VAR_DIR / "celery" / "processed").mkdir(parents=True, exist_ok=True)
    (VAR_DIR / "celery" / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # One folder for in and out: producers (Daphne) and the worker share it.
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(VAR_DIR / "celery" / "processed"),
        # Without it kombu writes its exchange files into the working directory.
        "control_folder": str(VAR_DIR / "celery" / "control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celery" / "beat-schedule")
# Three queues, so a slow mail server cannot delay a room's close or a payment command
# (config/celery.py routes each task; every worker command line names all three unless a
# deployment runs one worker per queue). Each queue's tasks have a soft limit (the task is
# interrupted and records why) and a hard one (its process is killed), in seconds.
CELERY_QUEUE_TIME_LIMITS: dict[str, tuple[int, int]] = {
    # Below PAYMENT_COMMAND_LEASE_SECONDS (120): a command's worker is gone before its lease
    # ends, so a second worker never talks to the provider about it at the same time.
    "money": (90, 110),
    # The sweep runs every 10 s; one that takes a minute is stuck, not busy.
    "rooms": (60, 90),
    # Below the email lease (EMAIL_LEASE_SECONDS): see there.
    "email": (60, 90),
}
# How long a worker owns an email while it talks to the mail server. Longer than the email
# task's hard limit: by the time the lease runs out, the worker that took it has finished or
# been killed, so the sweep's retry can never send the same email beside it.
EMAIL_LEASE_SECONDS = env_int("EMAIL_LEASE_SECONDS", 300)
if EMAIL_LEASE_SECONDS <= CELERY_QUEUE_TIME_LIMITS["email"][1]:
    raise ImproperlyConfigured("EMAIL_LEASE_SECONDS must be longer than the email task's limit.")

# --- Accounts and authentication ------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "home"

ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
# Verification is asked for at signup but enforced where it matters (booking, applying as an
# expert), so a new user can look around before opening their inbox.
ACCOUNT_EMAIL_VERIFICATION = "optional"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_SIGNUP_FORM_CLASS = "accounts.forms.SignupForm"
# Sends allauth's emails (verification, password reset) through the outbox, after commit.
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Parley] "
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Parley"

# --- Email ----------------------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)
# A mail server that accepts the connection and never answers would otherwise hold a worker
# forever (Python's socket default is no timeout). Each SMTP step waits at most this long.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 20)
# An email that failed this many times, and for this long, is parked: no longer retried by
# the sweep, listed in admin ("Status: parked") where staff can send it again. Both, because
# the task's back-off and the minute sweep use up the attempts within minutes: a mail server
# down for a while (an outage that passes) must delay emails, not park them.
EMAIL_MAX_ATTEMPTS = env_int("EMAIL_MAX_ATTEMPTS", 8)
EMAIL_GIVE_UP_HOURS = env_int("EMAIL_GIVE_UP_HOURS", 24)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Parley <noreply@parley.localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Payments -------------------------------------------------------------------------------
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY")
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")
# Points the Stripe client at another API host (localstripe in tests); empty means Stripe.
STRIPE_API_BASE = env_str("STRIPE_API_BASE")
PAYMENT_PROVIDER = env_choice(
    "PAYMENT_PROVIDER", ("local", "stripe"), "stripe" if STRIPE_SECRET_KEY else "local"
)
if PAYMENT_PROVIDER == "stripe" and not STRIPE_SECRET_KEY:
    raise ImproperlyConfigured("PAYMENT_PROVIDER=stripe needs STRIPE_SECRET_KEY.")
# The test-card provider holds no money: with DEBUG off it is refused (billing.E001, and at
# Daphne's start) unless the deployment says it wants it (a staging site, the test suite).
LOCAL_PAYMENTS_ALLOWED = env_bool("LOCAL_PAYMENTS_ALLOWED", default=False)
# The platform's share of every settled amount (Clarity.fm's 15 %); the expert gets the rest.
PLATFORM_FEE_PERCENT = env_int("PLATFORM_FEE_PERCENT", 15)
# Experts are paid this long after the settlement, if no dispute is open (the dispute window).
PAYOUT_DELAY_HOURS = env_int("PAYOUT_DELAY_HOURS", 72)
# A client may dispute a settled seat for this long (docs/RULES.md, Safety).
DISPUTE_WINDOW_HOURS = env_int("DISPUTE_WINDOW_HOURS", 72)
# Card holds lapse after about 7 days (5 for Visa merchant-initiated): sessions further out
# than this save the card and place the hold HOLD_BEFORE_HOURS before the start.
HOLD_LATER_AFTER_DAYS = env_int("HOLD_LATER_AFTER_DAYS", 6)
HOLD_BEFORE_HOURS = env_int("HOLD_BEFORE_HOURS", 24)
# A seat whose hold is still not placed this long before the start is released.
UNPAID_RELEASE_BEFORE_HOURS = env_int("UNPAID_RELEASE_BEFORE_HOURS", 2)
# Reservations waiting for the card that one client may hold at once, overall and with one
# expert: unpaid reservations block slots for everyone else (calendar squatting).
UNPAID_RESERVATIONS_MAX = env_int("UNPAID_RESERVATIONS_MAX", 3)
UNPAID_RESERVATIONS_PER_EXPERT_MAX = env_int("UNPAID_RESERVATIONS_PER_EXPERT_MAX", 2)
# How long one worker owns a payment command while it talks to the provider: longer than a
# Stripe call with its retries can take (3 × 20 s), so no second worker resends meanwhile.
# Longer than the money queue's hard time limit (system check billing.E002).
PAYMENT_COMMAND_LEASE_SECONDS = env_int("PAYMENT_COMMAND_LEASE_SECONDS", 120)

# --- WebRTC ICE servers ---------------------------------------------------------------------
STUN_URLS = env_list("STUN_URLS")
TURN_URLS = env_list("TURN_URLS")
TURN_SECRET = env_str("TURN_SECRET")
if TURN_URLS and not TURN_SECRET:
    raise ImproperlyConfigured("TURN_URLS needs TURN_SECRET (coturn's static-auth-secret).")

# --- Internationalisation -------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Hashed file names need `collectstatic`; development and tests serve from the finders.
_STATIC_MANIFEST = env_bool("STATIC_MANIFEST", default=not DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if _STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not _STATIC_MANIFEST
if not _STATIC_MANIFEST:
    # WhiteNoise warns about a missing STATIC_ROOT even when it serves from the finders.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# --- Security -------------------------------------------------------------------------------
# HTTPS is on wherever DEBUG is off; a deployment behind a TLS-terminating proxy also sets
# TRUST_X_FORWARDED_PROTO so Django knows the original request was secure.
HTTPS = env_bool("HTTPS", default=not DEBUG)
SECURE_SSL_REDIRECT = HTTPS
# Load balancers probe over plain HTTP inside the network; a redirect would read as "down".
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https" if HTTPS else "http"
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=HTTPS)
if env_bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Which address is the client's, behind a load balancer (docs/ARCHITECTURE.md, "Behind a proxy").
# Without it every request seems to come from the balancer, so ten failed logins by anyone
# would lock everyone out. TRUSTED_PROXY_COUNT: how many proxies of ours append to
# X-Forwarded-For (the client is the address that many from the right; what a client wrote
# further left is ignored). TRUSTED_CLIENT_IP_HEADER: a header the proxy sets to the client's
# address alone (e.g. X-Real-IP), used instead. Leave both unset when Daphne faces the
# internet: then a client could name any address. allauth reads them (login limits), and so
# do the POST limits (config/ratelimits.py); scripts/run.sh gives Daphne --proxy-headers
# with them, for X-Forwarded-Proto and its logs (whose address, X-Forwarded-For's left-most
# entry, the client can write: nothing trusts it).
ALLAUTH_TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = env_str("TRUSTED_CLIENT_IP_HEADER") or None

# Rate limits of the POSTs that can harm others when repeated (config/ratelimits.py), per
# signed-in user and per client address: "<count>/<period>" (s, m, h, d).
POST_RATE_LIMITS = {
    # Calendar squatting: reserving a slot is cheap, holding twenty is an attack.
    "booking:user": env_str("RATE_LIMIT_BOOKING_USER", "20/h"),
    "booking:ip": env_str("RATE_LIMIT_BOOKING_IP", "60/h"),
    "report:user": env_str("RATE_LIMIT_REPORT_USER", "10/h"),
    "report:ip": env_str("RATE_LIMIT_REPORT_IP", "30/h"),
    "block:user": env_str("RATE_LIMIT_BLOCK_USER", "30/h"),
    "block:ip": env_str("RATE_LIMIT_BLOCK_IP", "90/h"),
    "dispute:user": env_str("RATE_LIMIT_DISPUTE_USER", "10/h"),
    "dispute:ip": env_str("RATE_LIMIT_DISPUTE_IP", "30/h"),
}
RATELIMIT_VIEW = "config.errors.too_many_requests"
# A cache that is down lets requests through (config/cache.py): a limit is not worth an outage.
RATELIMIT_FAIL_OPEN = True

# Content-Security-Policy (django-csp). Pages load only our own scripts (ES modules from
# static/js, no inline script anywhere) and, on the pay page with the Stripe provider,
# Stripe.js with its frames and API (Stripe's documented CSP list). Inline styles stay
# allowed: two admin pages carry a <style> block, and a style cannot run code. The room's
# WebSocket is covered by 'self'.
_STRIPE = PAYMENT_PROVIDER == "stripe"
CONTENT_SECURITY_POLICY: dict[str, Any] = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, *(["https://js.stripe.com"] if _STRIPE else [])],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:", *(["https://*.stripe.com"] if _STRIPE else [])],
        "connect-src": [SELF, *(["https://api.stripe.com"] if _STRIPE else [])],
        "frame-src": ["https://js.stripe.com", "https://hooks.stripe.com"] if _STRIPE else [NONE],
        "object-src": [NONE],
        "base-uri": [SELF],
        # The payouts form answers with a redirect to Stripe's onboarding, which form-action
        # governs too.
        "form-action": [SELF, *(["https://connect.stripe.com"] if _STRIPE else [])],
        "frame-ancestors": [NONE],
    }
}

# --- Logging --------------------------------------------------------------------------------
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # The stripe package logs every request at INFO; its errors reach our own logs.
        "stripe": {"level": "WARNING"},
    },
}

# --- Health ---------------------------------------------------------------------------------
# How long /healthz waits for one component before calling it down.
HEALTH_CHECK_TIMEOUT_SECONDS = 2.0
CSRF_FAILURE_VIEW = "config.errors.csrf_failure"

# --- Booking policy (docs/RULES.md, Booking; a deployment may change it) -----------------
# How long an unpaid reservation holds a slot.
RESERVATION_HOLD_MINUTES = env_int("RESERVATION_HOLD_MINUTES", 10)
# A client who cancels at least this many hours before the start pays nothing.
FREE_CANCELLATION_HOURS = env_int("FREE_CANCELLATION_HOURS", 24)

# --- The room (docs/RULES.md: Room states, Presence, Close) ------------------------------
LOBBY_OPENS_MINUTES = env_int("LOBBY_OPENS_MINUTES", 10)
# Ten minutes after the start, a side that never joined is a no-show.
NO_SHOW_MINUTES = env_int("NO_SHOW_MINUTES", 10)
# After being live, a room nobody is in for this long closes (LiveKit's empty_timeout).
EMPTY_TIMEOUT_SECONDS = env_int("EMPTY_TIMEOUT_SECONDS", 300)
# Heartbeats every 5 s; a connection silent for 15 s is stale (LiveKit's numbers).
HEARTBEAT_STALE_SECONDS = env_int("HEARTBEAT_STALE_SECONDS", 15)
# A reconnect within this long after a drop resumes in place (Daily and LiveKit wait ~20 s).
RESUME_GRACE_SECONDS = env_int("RESUME_GRACE_SECONDS", 20)
HEARTBEAT_SECONDS = env_int("HEARTBEAT_SECONDS", 5)
# How far back a `media_state: disconnected` report may date the end of a media link (a report
# delayed in a dead connection's buffer; docs/SIGNALING.md).
MEDIA_REPORT_MAX_DELAY_SECONDS = env_int("MEDIA_REPORT_MAX_DELAY_SECONDS", 60)
# Signaling limits per connection (docs/SIGNALING.md): a message's size, a second's messages,
# and how often one peer's call-quality summary is stored.
SIGNALING_MAX_MESSAGE_BYTES = env_int("SIGNALING_MAX_MESSAGE_BYTES", 65_536)
SIGNALING_MAX_MESSAGES_PER_SECOND = env_int("SIGNALING_MAX_MESSAGES_PER_SECOND", 50)
# Admissions per participant per room in 10 s: each one makes every peer restart ICE.
SIGNALING_JOINS_MAX = env_int("SIGNALING_JOINS_MAX", 6)
# A socket opened before Join (`?join=later`) is closed if its `join` has not come by then: it
# holds nothing in the room, but it holds a connection (docs/SIGNALING.md, Connecting).
SIGNALING_JOIN_WAIT_SECONDS = env_int("SIGNALING_JOIN_WAIT_SECONDS", 120)
# Such sockets one account may have waiting at once in one process: one per room page open on
# its preflight. Past it, an account could hold a process's connections without a seat.
SIGNALING_WAITING_PER_USER = env_int("SIGNALING_WAITING_PER_USER", 5)
STATS_MIN_INTERVAL_SECONDS = env_int("STATS_MIN_INTERVAL_SECONDS", 5)
# TURN credentials last until the room's end plus this, and never longer than the maximum.
TURN_VALID_AFTER_END_MINUTES = env_int("TURN_VALID_AFTER_END_MINUTES", 10)
TURN_CREDENTIAL_MAX_SECONDS = env_int("TURN_CREDENTIAL_MAX_SECONDS", 7200)
