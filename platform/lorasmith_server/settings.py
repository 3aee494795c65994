"""Settings from environment variables, with defaults that run the whole service on a laptop.

DATABASE_URL (default: SQLite in the data dir), REDIS_URL (unset: in-process broker and channel
layer), LORASMITH_BROKER_URL (redis:// or amqp://; default REDIS_URL), LORASMITH_DATA_DIR,
LORASMITH_BASE_MODELS, SECRET_KEY, DEBUG, ALLOWED_HOSTS; LORASMITH_S3_* for checkpoints in object storage.
"""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from .env import ServiceSettings, env_bool, env_float, env_int, env_list, env_optional_int, env_str

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(env_str("LORASMITH_DATA_DIR", str(REPO_ROOT / ".data"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("LORASMITH_DATA_DIR", str(DATA_DIR))


def _persistent_secret(path: Path) -> str:
    """SECRET_KEY signs download URLs: never a public default. Without the variable, a random key
    is made once and kept in the data dir (0600), so every process sharing that dir agrees."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY") or _persistent_secret(DATA_DIR / "secret_key")
DEBUG = env_bool("DEBUG")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "*")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "django_dramatiq",
    "accounts",
    "training",
    "api",
    "front",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "api.middleware.DatabaseBusyMiddleware",
]

ROOT_URLCONF = "lorasmith_server.urls"
ASGI_APPLICATION = "lorasmith_server.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "front.context.dashboard",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'lorasmith.sqlite3'}"), conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # the web side and the in-process runner write concurrently: WAL + waiting instead of "locked"
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    # PostgreSQL: each process holds at most DB_POOL_SIZE connections, whatever the number of
    # clients or threads; a request that waits DB_POOL_TIMEOUT_SECONDS for one answers 503.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env_int("LORASMITH_DB_POOL_SIZE", 8),
        "timeout": env_float("LORASMITH_DB_POOL_TIMEOUT_SECONDS", 10.0),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
REDIS_NAMESPACE = env_str("LORASMITH_REDIS_NAMESPACE", "lorasmith")
DRAMATIQ_MIDDLEWARE = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Retries",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
    "training.execution.middleware.RecoverOnBoot",
]
# The Dramatiq broker: LORASMITH_BROKER_URL (redis:// or amqp:// for RabbitMQ), else REDIS_URL; with
# neither, an in-process broker (embedded mode). Push between processes always rides on Redis.
BROKER_URL = env_str("LORASMITH_BROKER_URL", REDIS_URL)
if BROKER_URL.startswith(("amqp://", "amqps://")):
    if not REDIS_URL:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("a RabbitMQ LORASMITH_BROKER_URL needs REDIS_URL too (the Channels layer for push)")
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.rabbitmq.RabbitmqBroker",
        "OPTIONS": {"url": BROKER_URL},
        "MIDDLEWARE": DRAMATIQ_MIDDLEWARE,
    }
elif BROKER_URL:
    DRAMATIQ_BROKER = {
        "BROKER": "training.execution.doorbell.DoorbellRedisBroker",  # wakes idle runners at once
        "OPTIONS": {"url": BROKER_URL, "namespace": REDIS_NAMESPACE},
        "MIDDLEWARE": DRAMATIQ_MIDDLEWARE,
    }
else:
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.stub.StubBroker",
        "OPTIONS": {},
        "MIDDLEWARE": DRAMATIQ_MIDDLEWARE,
    }
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout, the same as channels-redis's blocking BZPOPMIN:
            # an idle WebSocket would crash with 1011 after 5 s. Reads may block longer than the pop.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "prefix": REDIS_NAMESPACE,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# The cache holds the login throttle's failure counts: with several web processes they must share
# one count (Redis), or each process would allow its own budget of guesses.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_NAMESPACE,
        }
    }
DRAMATIQ_AUTODISCOVER_MODULES = ["execution.actors"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON in (views read the body through api.request_json) and JSON out: no forms, no HTML pages
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Lorasmith API",
    "VERSION": "1.0.0",
    "DESCRIPTION": "Tinker-compatible LoRA fine-tuning service (JSON form).",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.schema.add_retrieve_future"],
}

LORASMITH = ServiceSettings(
    # base models this deployment serves (hub ids or local paths); tiny-llama is always served
    base_models=("tiny-llama", *[m for m in env_list("LORASMITH_BASE_MODELS", "tiny-llama") if m != "tiny-llama"]),
    long_poll_seconds=env_float("LORASMITH_LONG_POLL_SECONDS", 25.0),
    signed_url_seconds=env_int("LORASMITH_SIGNED_URL_SECONDS", 3600),
    session_timeout_seconds=env_int("LORASMITH_SESSION_TIMEOUT_SECONDS", 600),
    max_body_bytes=env_int("LORASMITH_MAX_BODY_BYTES", 64 * 1024 * 1024),
    max_request_tokens=env_int("LORASMITH_MAX_REQUEST_TOKENS", 131072),
    max_sample_tokens=env_int("LORASMITH_MAX_SAMPLE_TOKENS", 32768),
    max_topk_cells=env_int("LORASMITH_MAX_TOPK_CELLS", 1024 * 1024),
    ws_key_check_seconds=env_float("LORASMITH_WS_KEY_CHECK_SECONDS", 5.0),
    ephemeral_samplers_kept=env_int("LORASMITH_EPHEMERAL_SAMPLERS_KEPT", 8),
    adapter_memory_bytes=env_optional_int("LORASMITH_ADAPTER_MEMORY_BYTES"),
    max_active_runs=env_int("LORASMITH_MAX_ACTIVE_RUNS", 64),
    max_pending_operations=env_int("LORASMITH_MAX_PENDING_OPERATIONS", 4096),
    max_pending_bytes=env_int("LORASMITH_MAX_PENDING_BYTES", 1024**3),
    test_hooks=env_bool("LORASMITH_TEST_HOOKS"),
    proto_compress_fwdbwd=env_bool("LORASMITH_PROTO_COMPRESS_FWDBWD"),
    queue_prefix=env_str("LORASMITH_QUEUE_PREFIX"),
    runner_dead_after_seconds=env_float("LORASMITH_RUNNER_DEAD_AFTER_SECONDS", 30.0),
    snapshot_every_steps=env_int("LORASMITH_SNAPSHOT_EVERY_STEPS", 20),
    engine_dtype=env_str("LORASMITH_ENGINE_DTYPE"),
    engine_pass_tokens=env_optional_int("LORASMITH_ENGINE_PASS_TOKENS"),
    cache_max_bytes=env_int("LORASMITH_CACHE_MAX_BYTES", 20 << 30),
)
DATA_UPLOAD_MAX_MEMORY_SIZE = LORASMITH.max_body_bytes


def _checkpoint_storage(bucket: str, endpoint_url: str) -> dict:
    """Checkpoints and snapshots (training/object_store.py): files under DATA_DIR unless both
    LORASMITH_S3_BUCKET and LORASMITH_S3_ENDPOINT_URL are set; then that S3-compatible store, with
    credentials from the standard AWS_* variables (boto3's own lookup)."""
    if bool(bucket) != bool(endpoint_url):
        raise ImproperlyConfigured("set both LORASMITH_S3_BUCKET and LORASMITH_S3_ENDPOINT_URL, or neither")
    if not bucket:
        return {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": DATA_DIR}}
    options = {
        "bucket_name": bucket,
        "endpoint_url": endpoint_url,
        "signature_version": "s3v4",
        "addressing_style": "path",  # any S3-compatible server, no bucket subdomains
        "querystring_expire": LORASMITH.signed_url_seconds,
        "max_memory_size": 8 * 1024 * 1024,  # a read spills to disk beyond this, never a whole file in memory
    }
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "checkpoints": _checkpoint_storage(env_str("LORASMITH_S3_BUCKET"), env_str("LORASMITH_S3_ENDPOINT_URL")),
}
# Presigned download URLs are signed for this endpoint when browsers reach the store by another
# address than the runners and web processes do (default: LORASMITH_S3_ENDPOINT_URL).
LORASMITH_S3_PUBLIC_URL = env_str("LORASMITH_S3_PUBLIC_URL")
# The ASGI server's connection guards (lorasmith_server/connection_guard.py): a request's headers and
# body must arrive within this many seconds of its first byte; at most this many connections at once
# from one client address (0: no cap; behind a reverse proxy, which shares one address, let it limit)
LORASMITH_REQUEST_DEADLINE_SECONDS = env_float("LORASMITH_REQUEST_DEADLINE_SECONDS", 60.0)
LORASMITH_MAX_CONNECTIONS_PER_ADDRESS = env_int("LORASMITH_MAX_CONNECTIONS_PER_ADDRESS", 256)

# The dashboard's assets (frontend/) and the admin's, served by the platform itself: asgi.py wraps
# Django in the staticfiles handler, so `manage.py serve` (daphne) needs no collectstatic or proxy.
STATIC_URL = "static/"
STATICFILES_DIRS = [REPO_ROOT / "frontend"]
STATIC_ROOT = DATA_DIR / "static"  # only for `collectstatic`, when a proxy serves /static/ instead

# Browser accounts (front/): sign-up open unless LORASMITH_OPEN_SIGNUP=false; password reset mails go
# to the console unless EMAIL_BACKEND names another backend (e.g. django.core.mail.backends.smtp.EmailBackend
# with EMAIL_HOST/EMAIL_PORT/EMAIL_HOST_USER/EMAIL_HOST_PASSWORD/EMAIL_USE_TLS).
LORASMITH_OPEN_SIGNUP = env_bool("LORASMITH_OPEN_SIGNUP", True)
LORASMITH_LOGIN_FAILURES_ALLOWED = env_int("LORASMITH_LOGIN_FAILURES_ALLOWED", 10)  # per username and per IP
LORASMITH_LOGIN_LOCKOUT_SECONDS = env_int("LORASMITH_LOGIN_LOCKOUT_SECONDS", 900)
LOGIN_URL = "front:login"
LOGIN_REDIRECT_URL = "front:runs"
LOGOUT_REDIRECT_URL = "front:login"
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "lorasmith@localhost")

# Cookies and HSTS: secure unless DEBUG. LORASMITH_SECURE_COOKIES=false serves plain-HTTP browsers on
# a LAN (localhost works either way); behind a TLS proxy set LORASMITH_TLS_PROXY=true so X-Forwarded-Proto
# counts, and CSRF_TRUSTED_ORIGINS when the proxy's origin differs from the Host header.
SECURE_COOKIES = env_bool("LORASMITH_SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
SECURE_HSTS_SECONDS = env_int("LORASMITH_HSTS_SECONDS", 0 if DEBUG else 31536000)  # sent over HTTPS only
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if env_bool("LORASMITH_TLS_PROXY"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
USE_TZ = True
TIME_ZONE = "UTC"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LORASMITH_LOG_LEVEL", "WARNING")},
}
