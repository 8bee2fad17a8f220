import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_wsgi_application()

# The common order placement is answered in front of Django's handler (marketplace.fast_path);
# every other request, and every order it is not sure about, goes to Django as before.
from marketplace.fast_path import OrderIntakeApplication  # noqa: E402 - needs Django set up

application = OrderIntakeApplication(django_application)
