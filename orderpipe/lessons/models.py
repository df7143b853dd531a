"""A learner's progress: which run of a lesson their browser session is on, and the checkpoints it passed.

Keyed by the session key, not a user: in DEBUG (`make run`) a learner needs no account, and a staff login keeps its
own session. Created by the first press of a lesson's "Start", never by opening the page. A run's orders are found by
their customer email, which names the run (see `run_email`): the exact addresses of recorded runs, never a domain."""

from __future__ import annotations

from django.db import models


class LessonRun(models.Model):
    """The current run of one lesson in one browser session. Its `run` id is part of the customer email of every
    order the lesson places, so the measures and the reset find exactly this run's orders; a reset starts a new run."""

    session_key = models.CharField(max_length=64)
    lesson = models.CharField(max_length=64)
    run = models.CharField(max_length=16)
    started_at = models.DateTimeField(auto_now_add=True)
    # Every run this session had of the lesson, so a reset clears the orders of older runs too.
    previous_runs = models.JSONField(default=list, blank=True)
    # The figures of each phase as they were when a later phase began (phase -> numbers, counters included).
    frozen = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["session_key", "lesson"], name="lesson_run_unique_session")]

    def __str__(self) -> str:
        return f"{self.lesson} run {self.run}"


class CheckpointPass(models.Model):
    """A checkpoint a session passed, with the numbers that passed it (kept when the lesson is reset)."""

    session_key = models.CharField(max_length=64)
    lesson = models.CharField(max_length=64)
    checkpoint = models.CharField(max_length=64)
    passed_at = models.DateTimeField(auto_now_add=True)
    numbers = models.JSONField(default=dict, blank=True)
    user = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["session_key", "lesson", "passed_at"]
        constraints = [
            models.UniqueConstraint(fields=["session_key", "lesson", "checkpoint"], name="checkpoint_pass_unique")
        ]

    def __str__(self) -> str:
        return f"{self.lesson}/{self.checkpoint} passed by {self.session_key[:8]}"
