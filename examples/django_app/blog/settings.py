"""Settings of the example blog: Django's own tables in Django's database, uploads in servefiles'.

Environment (all optional): SERVEFILES_DB (default: files.db here), SERVEFILES_CACHE_DIR
(default: cache/ here), DJANGO_DB (the path of Django's SQLite database, default:
django.db here), DJANGO_SECRET_KEY, DJANGO_DEBUG (default on; "0" turns it off).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "django-insecure-servefiles-example-only"  # dev only
DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() not in ("0", "false", "no", "off", "")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "posts",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "blog.urls"
WSGI_APPLICATION = "blog.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Django's own tables (users, sessions, posts): an SQLite file of Django's.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB") or BASE_DIR / "django.db",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# The uploaded files (FileField, ImageField): in the servefiles database, served under MEDIA_URL
# by blog/wsgi.py's wrap() from servefiles' memory and disk caches.
MEDIA_URL = "/media/"
# Files under members/ (Post.members_file) are private: servefiles lets a request through when
# blog.access.logged_in says its session is a logged-in user's (or, with SERVEFILES_SIGNING_KEY
# set, when it carries a signed URL: the storage's url() then signs them for URL_EXPIRES seconds).
SERVEFILES = {
    "DB": os.environ.get("SERVEFILES_DB") or f"sqlite:///{BASE_DIR / 'files.db'}",
    "CACHE_DIR": os.environ.get("SERVEFILES_CACHE_DIR") or BASE_DIR / "cache",
    "PRIVATE": ["members"],
    "AUTHORIZE": "blog.access.logged_in",
    "SIGNING_KEYS": os.environ.get("SERVEFILES_SIGNING_KEY", "").split(),
    "URL_EXPIRES": 3600,
}
STORAGES = {
    "default": {"BACKEND": "servefiles.contrib.django.ServeFilesStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
