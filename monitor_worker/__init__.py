"""The monitor service: ``monitor.run`` on queue ``monitor``, scheduled by Celery beat."""
