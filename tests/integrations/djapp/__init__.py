"""Models for the Django integration tests (app label ``djapp``)."""
