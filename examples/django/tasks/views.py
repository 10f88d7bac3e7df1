from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from taskstream.django import user_group

from .models import TaskNotification
from .tasks import report_progress


@login_required
def index(request):
    notifications = TaskNotification.objects.filter(user=request.user)[:10]
    return render(
        request,
        "tasks/index.html",
        {"notifications": notifications, "group": user_group(request.user)},
    )


@login_required
@require_POST
def start_task(request):
    # A real Celery worker runs it (`celery -A taskdemo worker`), Redis is the broker.
    result = report_progress.delay(request.user.pk)
    return JsonResponse({"task": result.id})


@require_GET
def ws_auth(request):
    """Forward auth for the sidecar: who is this session, and which groups may it hear?

    Replaces the consumer's connect(): the sidecar adds the user's group `user:<pk>` itself
    (--user-group, default user:{sub}), so no extra groups are needed here.
    """
    if not request.user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    return JsonResponse({"user": str(request.user.pk), "groups": []})
