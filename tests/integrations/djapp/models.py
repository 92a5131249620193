"""Models covering the field types the model codec must round-trip exactly, inheritance
(multi-table and proxy), foreign keys and a many-to-many relation."""

from __future__ import annotations

import uuid

from django.db import models


class Customer(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        BANNED = "banned"

    name = models.CharField(max_length=100)
    email = models.EmailField(null=True, blank=True)
    joined = models.DateTimeField()
    balance = models.DecimalField(max_digits=12, decimal_places=2)
    ref = models.UUIDField(default=uuid.uuid4)
    prefs = models.JSONField(default=dict)
    avatar = models.BinaryField(null=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    birthday = models.DateField(null=True)
    wakes_at = models.TimeField(null=True)
    grace = models.DurationField(null=True)
    score = models.FloatField(null=True)
    document = models.FileField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name

    @property
    def initials(self) -> str:
        return self.name[:1]


class VipCustomer(Customer):
    """Multi-table inheritance: a row in both tables."""

    level = models.IntegerField(default=1)


class CustomerProxy(Customer):
    class Meta:
        proxy = True


class Order(models.Model):
    customer = models.ForeignKey(
        Customer, null=True, on_delete=models.CASCADE, related_name="orders"
    )
    total = models.DecimalField(max_digits=10, decimal_places=2)
    placed = models.DateTimeField()


class Tag(models.Model):
    name = models.CharField(max_length=50)


class Post(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    title = models.CharField(max_length=100)
    author = models.ForeignKey(Customer, null=True, on_delete=models.SET_NULL)
    tags = models.ManyToManyField(Tag, related_name="posts")
