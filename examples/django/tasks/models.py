from django.conf import settings
from django.db import models


class TaskNotification(models.Model):
    """The durable record of a task's outcome; progress events are only the live view of it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    task_id = models.CharField(max_length=64)
    message = models.CharField(max_length=200)
    progress = models.PositiveSmallIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return f"{self.task_id}: {self.message}"
