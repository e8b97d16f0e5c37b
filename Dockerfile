# syntax=docker/dockerfile:1
#
# Sonic Serve worker image: the Ray head, every Ray worker group, the weights sync and the
# bucket bootstrap Job all run it (helm/sonic-serve).
#
#   docker build -t registry.campus.example:5000/sonic-serve/sonic-serve:0.1.0 .
#
# Weights are never baked in: pods pull them from s3://BUCKET/models into a node-local cache
# (`sonic-serve weights pull`). Keep RAY_IMAGE's Ray version equal to the chart's
# rayService.rayVersion (a test checks it).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu121
FROM ${RAY_IMAGE}

# Optional extra package index for CUDA-specific torch wheels, passed with --build-arg.
ARG PIP_EXTRA_INDEX_URL=""

# The base image runs as the non-root user "ray" (uid 1000, gid 100) with its Python in
# /home/ray/anaconda3; the chart's securityContext relies on that user.
USER ray
WORKDIR /tmp/sonic-serve
COPY --chown=1000:100 . .
RUN PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL}" pip install --no-cache-dir . \
 && cd / && rm -rf /tmp/sonic-serve \
 && python -c "import ray, sonic_serve; print('ray', ray.__version__)"
WORKDIR /home/ray

ENV SONIC_WEIGHTS=/models/sonic \
    PYTHONUNBUFFERED=1

# Serve HTTP, Ray dashboard, GCS, metrics.
EXPOSE 8000 8265 6379 8080
