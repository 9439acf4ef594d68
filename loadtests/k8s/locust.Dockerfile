# The locust image the cluster manifests run: locust with these users baked in. Its build context is loadtests/
# (the repository's .dockerignore keeps loadtests/ out of the service images):
#   docker build -f loadtests/k8s/locust.Dockerfile -t $REGISTRY/skg-locust:$TAG loadtests && docker push $REGISTRY/skg-locust:$TAG
FROM locustio/locust:2.47.0
RUN pip install --no-cache-dir "websocket-client==1.9.*"
COPY --chown=1000:1000 __init__.py /home/locust/loadtests/__init__.py
COPY --chown=1000:1000 users/ /home/locust/loadtests/users/
ENV PYTHONPATH=/home/locust
WORKDIR /home/locust
USER 1000
