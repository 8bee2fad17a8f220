import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

# The relay answers /v1/… (the OpenAI-compatible gateway); everything else is the Django site.
from relay.gateway import RelayApp  # noqa: E402 - needs the apps loaded above

application = RelayApp(fallback=django_application)
