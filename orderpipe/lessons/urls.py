"""/lessons/: the index, the instructor's page, one page per lesson, and their JSON."""

from django.urls import path

from orderpipe.lessons import views

urlpatterns = [
    path("", views.lesson_index, name="lessons"),
    path("instructor/", views.instructor_page, name="lessons-instructor"),
    path("instructor/reset/", views.ResetEveryLessonApi.as_view(), name="lessons-reset-all"),
    path("<slug:slug>/", views.lesson_page, name="lesson"),
    path("<slug:slug>/state/", views.LessonStateApi.as_view(), name="lesson-state"),
    path("<slug:slug>/reset/", views.LessonResetApi.as_view(), name="lesson-reset"),
    path("<slug:slug>/start/", views.LessonStartApi.as_view(), name="lesson-start"),
    path("<slug:slug>/phase/", views.LessonPhaseApi.as_view(), name="lesson-phase"),
    path("<slug:slug>/act/", views.LessonActApi.as_view(), name="lesson-act"),
]
