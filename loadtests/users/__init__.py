"""Locust users for the Serverless Kernel Gateway and the deployment models it is compared with.

Only ``rest``, ``sse``, ``jupyter``, ``hub`` and ``shape`` import locust (and so gevent); ``cells``,
``protocol``, ``arrivals`` and ``settings`` are pure and safe to import anywhere.
"""
