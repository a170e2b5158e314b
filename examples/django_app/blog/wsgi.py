"""The WSGI application: servefiles answers /media/ (MEDIA_URL), Django everything else.

Run it from this directory with ``gunicorn blog.wsgi``.
"""

import os

from django.core.wsgi import get_wsgi_application

from servefiles.contrib.django import wrap

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "blog.settings")

application = wrap(get_wsgi_application())
