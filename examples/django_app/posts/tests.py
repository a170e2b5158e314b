"""The storage backend as Django uses it: model fields, the admin, the storage API.

    python manage.py test posts

Django's test database is thrown away after the run; the files are not: they live in the
servefiles database that SERVEFILES_DB names. So every test uses names of its own and
deletes what it stored.
"""

import io
import struct
import uuid
import zlib
from pathlib import Path
from wsgiref.util import setup_testing_defaults

from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import TestCase, override_settings
from django.utils import timezone

from servefiles.contrib.django import ServeFilesStorage, files

from .models import Post


def png(width: int = 3, height: int = 2, seed: int = 0) -> bytes:
    """A real (valid, decodable) RGB PNG, different for each seed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((seed + x * 40 + y * 90) % 256 for x in range(width * 3)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:12]}"


class StorageTestCase(TestCase):
    def forget(self, name: str) -> None:
        """Delete ``name`` from the servefiles database when the test ends."""
        self.addCleanup(default_storage.delete, name)


class ModelFieldTests(StorageTestCase):
    def test_image_is_stored_in_servefiles(self) -> None:
        data = png(seed=1)
        name = unique("photo") + ".png"
        post = Post.objects.create(title="hello", image=SimpleUploadedFile(name, data, content_type="image/png"))
        self.forget(post.image.name)

        self.assertIsInstance(default_storage, ServeFilesStorage)
        self.assertEqual(post.image.name, f"blog/{name}")
        self.assertTrue(default_storage.exists(post.image.name))
        self.assertEqual(default_storage.size(post.image.name), len(data))
        with default_storage.open(post.image.name) as opened:
            self.assertEqual(opened.read(), data)
        self.assertEqual(post.image.url, f"/media/blog/{name}")
        self.assertEqual(default_storage.url(post.image.name), f"/media/blog/{name}")
        self.assertIn(name, default_storage.listdir("blog")[1])
        meta = files().stat(post.image.name)
        assert meta is not None
        self.assertEqual(meta.content_type, "image/png")

        # Read back from the database row, as a later request would.
        again = Post.objects.get(pk=post.pk)
        with again.image.open("rb") as opened:
            self.assertEqual(opened.read(), data)
        dimensions = Post.objects.get(pk=post.pk).image
        self.assertEqual((dimensions.width, dimensions.height), (3, 2))  # Pillow reads it from the store

    def test_same_name_twice_gets_a_new_name(self) -> None:
        name = unique("twice") + ".png"
        first = Post.objects.create(title="one", image=SimpleUploadedFile(name, png(seed=2)))
        self.forget(first.image.name)
        second = Post.objects.create(title="two", image=SimpleUploadedFile(name, png(seed=3)))
        self.forget(second.image.name)

        self.assertEqual(first.image.name, f"blog/{name}")
        self.assertNotEqual(second.image.name, first.image.name)
        self.assertTrue(second.image.name.startswith("blog/twice-") and second.image.name.endswith(".png"))
        with default_storage.open(first.image.name) as one, default_storage.open(second.image.name) as two:
            self.assertEqual((one.read(), two.read()), (png(seed=2), png(seed=3)))

    def test_attachment_and_delete(self) -> None:
        name = unique("notes") + ".txt"
        post = Post.objects.create(
            title="with attachment",
            image=SimpleUploadedFile(unique("p") + ".png", png(seed=4)),
            attachment=SimpleUploadedFile(name, b"some notes\n"),
        )
        self.forget(post.image.name)
        self.assertEqual(post.attachment.name, f"files/{name}")
        self.assertEqual(post.attachment.url, f"/media/files/{name}")

        stored = post.attachment.name
        post.attachment.delete(save=False)
        self.assertFalse(default_storage.exists(stored))
        with self.assertRaises(FileNotFoundError):
            default_storage.open(stored)
        with self.assertRaises(FileNotFoundError):
            default_storage.size(stored)
        default_storage.delete(stored)  # deleting a missing file is no error, as in Django's own storages

    def test_served_by_the_wrapped_wsgi_application(self) -> None:
        """blog.wsgi.application answers the image's URL itself (servefiles), not Django."""
        from blog.wsgi import application

        data = png(seed=5)
        post = Post.objects.create(title="served", image=SimpleUploadedFile(unique("s") + ".png", data, "image/png"))
        self.forget(post.image.name)
        environ: dict[str, object] = {"PATH_INFO": post.image.url, "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        replies: list[tuple[str, dict[str, str]]] = []
        body = application(environ, lambda status, headers, *_: replies.append((status, dict(headers))))
        try:
            content = b"".join(body)
        finally:
            getattr(body, "close", lambda: None)()
        status, headers = replies[0]
        self.assertEqual(status, "200 OK")
        self.assertEqual(content, data)
        self.assertEqual({name.lower(): value for name, value in headers.items()}["content-type"], "image/png")

    def test_reopen_after_close_reads_the_store(self) -> None:
        """A closed file reopens from the store, never from a local path that shares its name
        (a plain File would look for ``name`` relative to the working directory)."""
        data = png(seed=7)
        post = Post.objects.create(title="reopen", image=SimpleUploadedFile(unique("r") + ".png", data))
        self.forget(post.image.name)
        again = Post.objects.get(pk=post.pk)
        with again.image.open("rb") as opened:
            self.assertEqual(opened.read(), data)
        with again.image.open("rb") as opened:  # FieldFile.open() reopens the File it already has
            self.assertEqual(opened.read(), data)


class StorageApiTests(StorageTestCase):
    def test_a_stored_name_that_is_also_a_local_path_reopens_from_the_store(self) -> None:
        local = Path(__file__).resolve().parent.parent / "blog" / "urls.py"  # this project's own source
        self.assertTrue(local.exists())
        name = default_storage.save("blog/urls.py", ContentFile(b"STORED"))
        self.forget(name)
        opened = default_storage.open(name)
        self.assertEqual(opened.read(), b"STORED")
        opened.close()
        opened.open("rb")
        self.assertEqual(opened.read(), b"STORED")
        opened.close()

    def test_save_listdir_and_times(self) -> None:
        folder = unique("dir")
        name = default_storage.save(f"{folder}/a.txt", ContentFile(b"a"))
        self.forget(name)
        nested = default_storage.save(f"{folder}/sub/b.txt", ContentFile(b"bb"))
        self.forget(nested)

        self.assertEqual(name, f"{folder}/a.txt")
        self.assertEqual(default_storage.listdir(folder), (["sub"], ["a.txt"]))
        self.assertEqual(default_storage.listdir(f"{folder}/sub/"), ([], ["b.txt"]))
        directories, _ = default_storage.listdir("")
        self.assertIn(folder, directories)

        modified = default_storage.get_modified_time(name)
        self.assertTrue(timezone.is_aware(modified))
        self.assertLess(abs((timezone.now() - modified).total_seconds()), 300)
        self.assertTrue(timezone.is_aware(default_storage.get_created_time(name)))
        with override_settings(USE_TZ=False):
            self.assertTrue(timezone.is_naive(default_storage.get_modified_time(name)))

    def test_large_file_round_trip(self) -> None:
        data = uuid.uuid4().bytes * 200_000  # 3.2 MB: several store chunks, spilled to a temp file on open
        name = default_storage.save(unique("big") + ".bin", io.BytesIO(data))
        self.forget(name)
        self.assertEqual(default_storage.size(name), len(data))
        with default_storage.open(name) as opened:
            self.assertEqual(opened.read(), data)

    def test_names_the_key_gate_refuses(self) -> None:
        # Django's own checks let a control character through (validate_file_name looks only for
        # "..", absolute paths and empty names); the storage's key gate refuses it.
        for name in (f"blog/{unique('bad')}\x01.png", f"blog/{unique('bad')}\u2028.png"):
            with self.subTest(name=name), self.assertRaises(SuspiciousFileOperation):
                default_storage.save(name, ContentFile(b"x"))
        with self.assertRaises(SuspiciousFileOperation):
            default_storage.exists("blog/\x00.png")
        # Reached directly, _save refuses it too, and nothing is stored.
        with self.assertRaises(SuspiciousFileOperation):
            ServeFilesStorage()._save("blog/tab\there.png", ContentFile(b"x"))
        # Path traversal never gets that far: Django refuses it first.
        with self.assertRaises(SuspiciousFileOperation):
            default_storage.save("../escape.png", ContentFile(b"x"))


class AdminTests(StorageTestCase):
    def test_upload_through_the_admin(self) -> None:
        get_user_model().objects.create_superuser("admin", "admin@example.com", "a password")
        self.assertTrue(self.client.login(username="admin", password="a password"))
        data = png(seed=6)
        name = unique("admin") + ".png"

        response = self.client.post(
            "/admin/posts/post/add/",
            {"title": "From the admin", "image": SimpleUploadedFile(name, data, "image/png"), "attachment": ""},
            follow=True,
        )
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.redirect_chain[-1][0], "/admin/posts/post/")
        post = Post.objects.get(title="From the admin")
        self.forget(post.image.name)

        self.assertEqual(post.image.name, f"blog/{name}")
        self.assertEqual(post.image.url, f"/media/blog/{name}")
        with default_storage.open(post.image.name) as opened:
            self.assertEqual(opened.read(), data)
        self.assertFalse(post.attachment)

        page = self.client.get("/")
        self.assertContains(page, f'<img src="/media/blog/{name}"')

    def test_attachment_with_a_malformed_declared_type(self) -> None:
        """A FileField keeps the type the client declared in its multipart part; a malformed
        one is not stored (it would fail the save): the type is guessed from the name instead."""
        get_user_model().objects.create_superuser("admin", "admin@example.com", "a password")
        self.client.force_login(get_user_model().objects.get(username="admin"))
        image, notes = unique("typed") + ".png", unique("notes") + ".txt"
        self.addCleanup(default_storage.delete, f"blog/{image}")
        self.addCleanup(default_storage.delete, f"files/{notes}")
        response = self.client.post(
            "/admin/posts/post/add/",
            {
                "title": "Typed",
                "image": SimpleUploadedFile(image, png(seed=8), "image/png"),
                "attachment": SimpleUploadedFile(notes, b"notes\n", "not a type"),
            },
        )
        self.assertEqual(response.status_code, 302)
        meta = files().stat(f"files/{notes}")
        assert meta is not None
        self.assertEqual(meta.content_type, "text/plain")
