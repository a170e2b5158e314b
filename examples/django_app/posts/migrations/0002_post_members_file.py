# ruff: noqa: RUF012 - as makemigrations writes it

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('posts', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='post',
            name='members_file',
            field=models.FileField(blank=True, help_text='For logged-in users only.', upload_to='members/'),
        ),
    ]
