"""The demo shop's schema: users with a profile, preferences and orders with items."""

from __future__ import annotations

from typing import ClassVar

from django.db import models


class User(models.Model):
    """A customer. ``version`` goes up by one on every write, so clients can spot stale reads."""

    email = models.CharField(max_length=120, unique=True)
    name = models.CharField(max_length=120)
    joined_at = models.DateTimeField()
    version = models.PositiveIntegerField(default=1)

    class Meta:
        app_label = "demo"


class Profile(models.Model):
    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="profile")
    bio = models.TextField()
    city = models.CharField(max_length=80)
    avatar_url = models.CharField(max_length=200)
    loyalty_points = models.IntegerField(default=0)

    class Meta:
        app_label = "demo"


class Preference(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="preferences")
    key = models.CharField(max_length=40)
    value = models.CharField(max_length=80)

    class Meta:
        app_label = "demo"


class Order(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="orders")
    created_at = models.DateTimeField()
    status = models.CharField(max_length=20)
    total = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        app_label = "demo"
        indexes: ClassVar = [models.Index(fields=["user", "-created_at"])]


class OrderItem(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="items")
    sku = models.CharField(max_length=20)
    title = models.CharField(max_length=120)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        app_label = "demo"
