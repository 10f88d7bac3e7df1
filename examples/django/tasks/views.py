import threading

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from .models import TaskNotification
from .tasks import report_progress


@login_required
def index(request):
    notifications = TaskNotification.objects.filter(user=request.user)[:10]
    return render(request, "tasks/index.html", {"notifications": notifications})


@login_required
@require_POST
def start_task(request):
    # Stands in for report_progress.delay(request.user.pk) with Celery.
    threading.Thread(target=report_progress, args=(request.user.pk,), daemon=True).start()
    return JsonResponse({"started": True})


@require_GET
def ws_auth(request):
    """Forward auth for the sidecar: who is this session, and which groups may it hear?

    Replaces the consumer's connect(): the sidecar adds `user_{user}_tasks` itself
    (--user-group user_{sub}_tasks), so no extra groups are needed here.
    """
    if not request.user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    return JsonResponse({"user": str(request.user.pk), "groups": []})
