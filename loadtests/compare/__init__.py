"""``skg-compare`` / ``python -m loadtests.compare``: three deployment models measured on one machine.

The driver never imports locust (gevent monkey-patches whatever imports it): locust runs as a subprocess.
"""
