from django.db import models


class Post(models.Model):
    """A blog post; its files are stored by STORAGES["default"]: the servefiles database."""

    title = models.CharField(max_length=200)
    image = models.ImageField(upload_to="blog/")
    attachment = models.FileField(upload_to="files/", blank=True)
    members_file = models.FileField(upload_to="members/", blank=True, help_text="For logged-in users only.")

    def __str__(self) -> str:
        return self.title
