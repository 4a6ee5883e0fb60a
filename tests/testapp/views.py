"""Views for the middleware tests: each writes a tracked row."""

import asyncio

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from tests.testapp.models import Product


@csrf_exempt
def write(request):
    Product.objects.create(name=request.GET["name"], price=1)
    return HttpResponse("ok")


@csrf_exempt
def late_user(request):
    """Authenticates in the view, as django-rest-framework does."""
    request.user = User.objects.get(username=request.GET["as"])
    Product.objects.create(name=request.GET["name"], price=1)
    return HttpResponse("ok")


@csrf_exempt
async def async_write(request):
    """Writes twice with a pause between, so concurrent requests interleave."""
    name = request.GET["name"]
    await sync_to_async(Product.objects.create)(name=name, price=1)
    await asyncio.sleep(0.05)
    await sync_to_async(Product.objects.filter(name=name).update)(price=2)
    return HttpResponse("ok")


@csrf_exempt
async def async_late_user(request):
    """Authenticates in an async view."""
    request.user = await User.objects.aget(username=request.GET["as"])
    await sync_to_async(Product.objects.create)(name=request.GET["name"], price=1)
    return HttpResponse("ok")
