"""The admin at /admin/ and the list of posts at /, each with its image from /media/."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.http import HttpRequest, HttpResponse
from django.template import Context, Template
from django.urls import path
from posts.models import Post

PAGE = Template(
    """<!doctype html><title>Blog</title><h1>Posts</h1>
{% for post in posts %}<article><h2>{{ post.title }}</h2><img src="{{ post.image.url }}" alt="" height="200">
{% if post.attachment %}<p><a href="{{ post.attachment.url }}">{{ post.attachment.name }}</a></p>{% endif %}</article>
{% empty %}<p>No posts yet: add one in the <a href="/admin/posts/post/add/">admin</a>.</p>{% endfor %}"""
)


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE.render(Context({"posts": Post.objects.order_by("-id")})))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("", index),
    *staticfiles_urlpatterns(),  # the admin's CSS under gunicorn while DEBUG is on
]
