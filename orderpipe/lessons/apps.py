"""The /lessons/ section: break a guarantee of the pipeline on purpose, count what breaks, fix it, count again."""

from django.apps import AppConfig


class LessonsConfig(AppConfig):
    name = "orderpipe.lessons"
    label = "lessons"
    verbose_name = "lessons"
    default_auto_field = "django.db.models.BigAutoField"
