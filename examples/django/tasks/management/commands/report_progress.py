"""`python manage.py report_progress --user alice`: runs the task from a plain process, the way a
Celery worker would."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from tasks.tasks import report_progress


class Command(BaseCommand):
    help = "Run the progress-reporting task for a user (as a Celery worker would)."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="username")
        parser.add_argument("--steps", type=int, default=5)
        parser.add_argument("--task-id", default=None)

    def handle(self, *args, user, steps, task_id, **options):
        pk = get_user_model().objects.get(username=user).pk
        self.stdout.write(report_progress(pk, steps=steps, task_id=task_id))
