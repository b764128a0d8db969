# wsgiproxy: gunicorn + gevent workers, as a non-root user.
#
#   docker build -t wsgiproxy .
#   docker run -p 3001:3001 -v /etc/wsgiproxy:/etc/wsgiproxy:ro \
#       --tmpfs /tmp --stop-timeout 150 wsgiproxy
#
# Stop: `docker stop` sends TERM to gunicorn (PID 1, exec form): listeners close at once and
# streams finish for up to graceful_timeout (120 s), so give --stop-timeout / stop_grace_period
# (Kubernetes: terminationGracePeriodSeconds) more than that. Reload: `docker kill -s HUP`.
FROM python:3.13-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --home-dir /home/wsgiproxy --shell /usr/sbin/nologin --uid 10001 wsgiproxy

WORKDIR /app
COPY pyproject.toml README.md ./
COPY wsgiproxy ./wsgiproxy
COPY servers ./servers
COPY conf ./conf
RUN pip install .

# Worker heartbeats and the prometheus multiprocess files live on tmpfs: Docker's /dev/shm
# (64 MB by default, plenty). The metrics directory is emptied by gunicorn's on_starting.
ENV WSGIPROXY_BIND=0.0.0.0:3001 \
    WSGIPROXY_WORKER_TMP_DIR=/dev/shm \
    PROMETHEUS_MULTIPROC_DIR=/dev/shm/wsgiproxy-metrics \
    WSGIPROXY_CONFIG=/etc/wsgiproxy/config.json

USER wsgiproxy
EXPOSE 3001

# No curl in the slim image: the interpreter does the probe. /health never calls SAP AI Core.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3001/health', timeout=3)"]

# Exec form: gunicorn is PID 1 and receives TERM and HUP itself (a shell would swallow them).
CMD ["gunicorn", "-c", "conf/gunicorn.conf.py", "wsgiproxy:app"]
