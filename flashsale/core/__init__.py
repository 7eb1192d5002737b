"""Pure domain and the Redis data layer: no flask, celery, click or rich here."""
