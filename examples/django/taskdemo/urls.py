from django.contrib import admin
from django.urls import include, path

from tasks import views

urlpatterns = [
    path("", views.index, name="index"),
    path("tasks/start/", views.start_task, name="start-task"),
    # Forward auth: the sidecar asks this with the browser's cookies before every WebSocket.
    path("ws-auth/", views.ws_auth, name="ws-auth"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
