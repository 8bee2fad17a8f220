from django.contrib.auth.decorators import login_required
from django.http import HttpResponse


@login_required
def dashboard(request):
    return HttpResponse("dashboard")


@login_required
def topup_detail(request, topup_id: int):
    return HttpResponse("top-up")
