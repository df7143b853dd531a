"""The lesson pages (index, one lesson, the instructor's) and their JSON: a lesson's state, polled every second by
static/js/lessons.js, and the resets.

Watching follows the dashboard's rule (`can_watch`: anyone in DEBUG, staff otherwise); acting is a sandbox control
(`can_control`: staff, sandbox on). The lesson's buttons call the pipeline's existing endpoints (sandbox, burst,
replay, ...), which enforce the same rule themselves. With ORDERPIPE_SANDBOX=false the pages say that the lessons
need the sandbox and every JSON endpoint here answers 404, like the other sandbox controls.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orderpipe.dashboard import pages
from orderpipe.dashboard.pages import ORDER_ID_PLACEHOLDER
from orderpipe.lessons import services
from orderpipe.lessons.catalog import BY_SLUG, LESSONS, NUMBER_LABELS, WAITS, Lesson, text_values
from orderpipe.lessons.measure import FLAKY_NOTE_PREFIX
from orders.access import can_control, can_watch
from orders.permissions import is_staff
from worker.topology import topology


def session_key(request: HttpRequest) -> str:
    """The browser session's key, creating the session if it has none yet. Only the actions call it (start, reset,
    a phase begun): opening or polling a page creates nothing."""
    if request.session.session_key is None:
        request.session["lessons"] = True
        request.session.save()
    key = request.session.session_key
    assert key is not None
    return key


def _lesson(slug: str) -> Lesson:
    lesson = BY_SLUG.get(slug)
    if lesson is None:
        raise Http404("No such lesson.")
    return lesson


def _context(request: HttpRequest) -> dict[str, Any]:
    """What templates/base.html needs: the dashboard pages' own context (banners, login link, page config), so the
    lesson pages show the same header, banners and live status."""
    return pages._context(request)


def diagram_items(lesson: Lesson, values: dict[str, str]) -> list[dict[str, Any]]:
    """The diagram's boxes with its arrows between them, in drawing order."""
    diagram = lesson.diagram
    items: list[dict[str, Any]] = []
    for index, box in enumerate(diagram.boxes):
        items.append({"box": box.format(**values)})
        if index < len(diagram.arrows):
            items.append({"arrow": diagram.arrows[index].format(**values), "broken": diagram.broken == index})
    return items


@ensure_csrf_cookie
def lesson_index(request: HttpRequest) -> HttpResponse:
    if not can_watch(request.user):
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    passed: set[tuple[str, str]] = set()
    if settings.ORDERPIPE_SANDBOX and request.session.session_key:
        passed = set(
            services.CheckpointPass.objects.filter(session_key=request.session.session_key).values_list(
                "lesson", "checkpoint"
            )
        )
    rows = [
        {
            "lesson": lesson,
            "passed": sum((lesson.slug, c.id) in passed for c in lesson.checkpoints),
            "total": len(lesson.checkpoints),
        }
        for lesson in LESSONS
    ]
    return render(request, "lessons/index.html", {**_context(request), "rows": rows})


@ensure_csrf_cookie
def lesson_page(request: HttpRequest, slug: str) -> HttpResponse:
    if not can_watch(request.user):
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    lesson = _lesson(slug)
    context: dict[str, Any] = {**_context(request), "lesson": lesson}
    if settings.ORDERPIPE_SANDBOX:
        values = text_values(lesson)
        state = services.lesson_state(request.session.session_key, lesson, user=request.user.get_username())
        context.update(
            intro=[paragraph.format(**values) for paragraph in lesson.intro],
            diagram=diagram_items(lesson, values),
            state=state,
            labels=[(name, NUMBER_LABELS[name]) for name in lesson.shown_numbers()],
            lesson_config={
                "slug": lesson.slug,
                "stateUrl": reverse("lesson-state", args=[lesson.slug]),
                "resetUrl": reverse("lesson-reset", args=[lesson.slug]),
                "startUrl": reverse("lesson-start", args=[lesson.slug]),
                "phaseUrl": reverse("lesson-phase", args=[lesson.slug]),
                "actUrl": reverse("lesson-act", args=[lesson.slug]),
                "numbers": list(lesson.shown_numbers()),
                "chart": lesson.chart,
                "steps": [
                    [
                        {
                            "label": a.label,
                            "kind": a.kind,
                            "params": dict(a.params),
                            "phase": a.phase,
                            "waits": [list(wait) for wait in a.waits],
                        }
                        for a in step.actions
                    ]
                    for step in lesson.steps
                ],
                "begins": lesson.begins(),
                "labels": NUMBER_LABELS,
                "waitLabels": WAITS,
                "flakyNotePrefix": FLAKY_NOTE_PREFIX,
                "mainQueue": topology().process_queue,
                "products": reverse("api-product-list"),
                "orderApi": reverse("api-order-detail", args=[ORDER_ID_PLACEHOLDER]),
                "pollMs": 1000,
                # A settings change is done once every worker runs it: how long the page waits for that at most.
                "appliedWaitMs": 120_000,
            },
        )
    return render(request, "lessons/lesson.html", context)


@ensure_csrf_cookie
def instructor_page(request: HttpRequest) -> HttpResponse:
    if not is_staff(request.user):
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    return render(
        request,
        "lessons/instructor.html",
        {
            **_context(request),
            "sessions": services.sessions_progress() if settings.ORDERPIPE_SANDBOX else [],
            "lessons": LESSONS,
            "reset_url": reverse("lessons-reset-all"),
        },
    )


class LessonsExist(BasePermission):
    """Outside the sandbox the lessons' endpoints do not exist (404), like the sandbox controls."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not settings.ORDERPIPE_SANDBOX:
            raise NotFound("The lessons need the sandbox (ORDERPIPE_SANDBOX=false).")
        return True


class CanWatch(LessonsExist):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return super().has_permission(request, view) and can_watch(request.user)


class CanControl(LessonsExist):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return super().has_permission(request, view) and can_control(request.user)


def _api_lesson(slug: str) -> Lesson:
    try:
        return _lesson(slug)
    except Http404:
        raise NotFound("No such lesson.") from None


class LessonStateApi(APIView):
    permission_classes = [CanWatch]

    @extend_schema(exclude=True)
    def get(self, request: Request, slug: str) -> Response:
        """The lesson's numbers per phase and its checkpoints, for this browser session (zeros before "Start")."""
        lesson = _api_lesson(slug)
        return Response(services.lesson_state(request.session.session_key, lesson, user=request.user.get_username()))


class LessonStartApi(APIView):
    permission_classes = [CanControl]

    @extend_schema(exclude=True)
    def post(self, request: Request, slug: str) -> Response:
        """A fresh run and the lesson's baseline settings; answers once the workers run them, with what it reset."""
        lesson = _api_lesson(slug)
        return Response(services.lesson_start(session_key(request), lesson, by=request.user.get_username()))


class LessonPhaseApi(APIView):
    permission_classes = [CanControl]

    @extend_schema(exclude=True)
    def post(self, request: Request, slug: str) -> Response:
        """A step that begins a phase was pressed: the earlier phases keep their figures from now on."""
        lesson = _api_lesson(slug)
        phase = request.data.get("phase") if isinstance(request.data, dict) else None
        if not isinstance(phase, str) or phase not in lesson.phase_ids():
            raise ValidationError({"phase": [f"One of {', '.join(lesson.phase_ids())}."]})
        return Response(services.phase_begin(session_key(request), lesson, phase))


class LessonActApi(APIView):
    permission_classes = [CanControl]

    @extend_schema(exclude=True)
    def post(self, request: Request, slug: str) -> Response:
        """Carry out one of the lesson's steps that needs the server (its catalog says what; the page names which by
        its step and its place in the step)."""
        lesson = _api_lesson(slug)
        data = request.data if isinstance(request.data, dict) else {}
        step, index = data.get("step"), data.get("action")
        if not isinstance(step, int) or not isinstance(index, int):
            raise ValidationError({"step": ["The step's and the action's numbers (from 0)."]})
        try:
            action = services.lesson_action(lesson, step, index)
        except KeyError:
            raise ValidationError({"step": ["No step of this lesson the server carries out there."]}) from None
        try:
            return Response(services.lesson_act(session_key(request), lesson, action, by=request.user.get_username()))
        except services.ActionRefused as exc:
            return Response({"detail": str(exc)}, status=409)


class LessonResetApi(APIView):
    permission_classes = [CanControl]

    @extend_schema(exclude=True)
    def post(self, request: Request, slug: str) -> Response:
        """The lesson's baseline, this session's orders of the lesson deleted, a fresh run."""
        lesson = _api_lesson(slug)
        return Response(services.lesson_reset(session_key(request), lesson, by=request.user.get_username()))


class ResetEveryLessonApi(APIView):
    permission_classes = [CanControl]

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        """The instructor's reset: every lesson's orders, runs and passed checkpoints, and safe defaults."""
        return Response(services.reset_every_lesson(by=request.user.get_username()))
