"""The admin at /admin/, the list of posts at /, each with its image from /media/, and the
members' page at /members/ (login required) with links to the private files."""

from django.contrib import admin
from django.contrib.auth.decorators import login_required
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


MEMBERS = Template(
    """<!doctype html><title>Members</title><h1>Members' files</h1><ul>
{% for post in posts %}<li><a href="{{ post.members_file.url }}">{{ post.members_file.name }}</a></li>
{% empty %}<li>None yet.</li>{% endfor %}</ul>"""
)


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE.render(Context({"posts": Post.objects.order_by("-id")})))


@login_required(login_url="/admin/login/")
def members(request: HttpRequest) -> HttpResponse:
    """Links to the members' files: servefiles serves each to a logged-in user only (blog.access)."""
    posts = Post.objects.exclude(members_file="").order_by("-id")
    return HttpResponse(MEMBERS.render(Context({"posts": posts})))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("", index),
    path("members/", members),
    *staticfiles_urlpatterns(),  # the admin's CSS under gunicorn while DEBUG is on
]
