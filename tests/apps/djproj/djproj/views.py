"""Views for the integration tests: plain text, and a CSRF-protected form."""

from django.http import HttpResponse
from django.template import engines

FORM = engines["django"].from_string(
    "<!doctype html><html><body>"
    "<form method=\"post\" action=\"/form/\">{% csrf_token %}"
    "<input name=\"message\"><button>Send</button></form>"
    "{% if message is not None %}<p id=\"echo\">You said: {{ message }}</p>{% endif %}"
    "</body></html>"
)


def hello(request):
    return HttpResponse("Hello from Django", content_type="text/plain")


def form(request):
    message = request.POST.get("message", "") if request.method == "POST" else None
    return HttpResponse(FORM.render({"message": message}, request))
