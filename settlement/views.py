"""The Stripe webhook endpoint: verify, store once, answer at once; a task does the work."""

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from core.api import error_body
from settlement import stripe_gateway
from settlement.errors import WebhookSignatureInvalid
from settlement.services import stripe_event_record


@csrf_exempt  # Stripe cannot send a CSRF token; the signature is the proof of origin
@require_POST
def stripe_webhook(request):
    try:
        event = stripe_gateway.webhook_event_verify(
            payload=request.body, signature_header=request.headers.get("Stripe-Signature", "")
        )
    except WebhookSignatureInvalid as error:
        return JsonResponse(error_body(error.code, error.message), status=400)
    except stripe_gateway.WebhookPayloadInvalid as error:
        return JsonResponse(error_body("invalid_event", str(error)), status=400)
    # Answer 200 once the event is stored, whatever processing later makes of it: Stripe
    # retries anything else for days, and a stored event is retried by our own redrive instead.
    row, is_new = stripe_event_record(event=event)
    return JsonResponse({"received": True, "duplicate": not is_new, "status": row.status})
