# syntax=docker/dockerfile:1
#
# High Peaks ML Platform server image.
#
#   docker build -t highpeaks-ml-platform:latest .                              # GPU-capable (default)
#   docker build --build-arg WITH_CUDA_LIBS=false -t highpeaks-ml-platform:cpu .  # CPU only, smaller
#
# One image serves on the GPU when the node gives it one and on the CPU
# elsewhere: onnxruntime-gpu carries both execution providers; the CUDA and
# cuDNN user-space libraries come from NVIDIA's Python wheels (onnxruntime-gpu's
# `cuda` and `cudnn` extras), the driver from the node (NVIDIA container
# toolkit / device plugin). Sizes and the reasons are in docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-trixie

# --- builder: a virtual environment in /opt/venv ---------------------------
FROM ${PYTHON_IMAGE} AS builder

ARG WITH_CUDA_LIBS=true

# No pip cache in any layer. PYTHONDONTWRITEBYTECODE is not set here on
# purpose: pip compiles what it installs, so the read-only runtime need not.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Lockfile first: the dependency layers below are rebuilt only when
# pyproject.toml or constraints.txt change, not on every source edit.
COPY pyproject.toml constraints.txt ./

# The runtime dependencies (no dev extra), read from pyproject.toml and pinned
# by constraints.txt; the environment markers pick onnxruntime-gpu on x86_64.
# Plus the gradient-boosting extra: `boost-gpu` (XGBoost's CUDA build, which
# trains on the GPU, ~550 MB with NCCL) in the GPU image, `boost` (the
# CPU-only xgboost-cpu wheel) without CUDA libraries. One module, two wheels:
# never both (docs/training.md, "XGBoost and LightGBM").
RUN extra="$([ "$WITH_CUDA_LIBS" = "true" ] && echo boost-gpu || echo boost)" \
    && python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies'][sys.argv[1]]))" "$extra" > /tmp/requirements.txt \
    && pip install --no-cache-dir --constraint constraints.txt --requirement /tmp/requirements.txt

# The `ray` extra (ray[default], pinned by constraints.txt): the trainer's
# --training-backend ray, and the same image runs the KubeRay head and workers
# (k8s/overlays/ray). About 270 MB installed; WITH_RAY=false leaves it out.
ARG WITH_RAY=true
RUN if [ "$WITH_RAY" = "true" ]; then \
        python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['ray']))" > /tmp/ray.txt \
        && pip install --no-cache-dir --constraint constraints.txt --requirement /tmp/ray.txt; \
    fi

# CUDA 13 and cuDNN 9 user-space libraries for onnxruntime's CUDA provider
# (about 1.25 GiB of wheels, 2 GiB installed). The onnxruntime-gpu version
# stays the one in constraints.txt, and so do the NVIDIA wheels (pinned there
# by scripts/pin_cuda_libs.py, which `make lock` runs).
RUN if [ "$WITH_CUDA_LIBS" = "true" ]; then \
        ort="$(grep -i '^onnxruntime-gpu==' constraints.txt)" \
        && pip install --no-cache-dir --constraint constraints.txt "onnxruntime-gpu[cuda,cudnn]==${ort#*==}"; \
    fi

# The source last; --no-deps: everything it needs is installed above.
COPY README.md ./
COPY highpeaks_ml ./highpeaks_ml
RUN pip install --no-cache-dir --no-deps . \
    && highpeaks-ml --version

# --- runtime ----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG WITH_CUDA_LIBS=true

LABEL org.opencontainers.image.title="highpeaks-ml-platform" \
      org.opencontainers.image.description="Train scikit-learn models, export them to ONNX and serve them over gRPC" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.highpeaks.ml.cuda-libs="${WITH_CUDA_LIBS}"

# A fixed numeric UID/GID (10001) so Kubernetes' runAsUser/fsGroup and the
# image agree, and runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 highpeaks \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/highpeaks-ml --shell /usr/sbin/nologin highpeaks \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/highpeaks-ml

# LightGBM's wheel links the system's OpenMP runtime (scikit-learn and
# XGBoost bring their own copies); the slim image has none. Debian's package
# version is not pinned: stable only ships security fixes of it, and a pin
# would break the build at the next one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv

# Settings the container always wants (each a HIGHPEAKS_ML_* setting, see the
# README's table): listen on every interface, bearer JWTs required (the server
# refuses to start without a key: mount one and set HIGHPEAKS_ML_JWT_JWKS_FILE
# or HIGHPEAKS_ML_JWT_PUBLIC_KEY_FILE), metrics on 9090, JSON logs.
# LD_LIBRARY_PATH lets onnxruntime find the CUDA/cuDNN wheels' libraries
# (harmless when built without them). NVIDIA_DRIVER_CAPABILITIES asks the
# container toolkit for the compute libraries; NVIDIA_VISIBLE_DEVICES is left
# to the device plugin so the image never grants GPUs by itself.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HIGHPEAKS_ML_HOST=0.0.0.0 \
    HIGHPEAKS_ML_PORT=50051 \
    HIGHPEAKS_ML_HOME=/var/lib/highpeaks-ml \
    HIGHPEAKS_ML_AUTH_MODE=jwt \
    HIGHPEAKS_ML_METRICS_PORT=9090 \
    HIGHPEAKS_ML_LOG_FORMAT=json \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER 10001:10001
WORKDIR /var/lib/highpeaks-ml
VOLUME ["/var/lib/highpeaks-ml"]

# 50051: gRPC (the API, grpc.health.v1, reflection); 9090: Prometheus metrics.
EXPOSE 50051 9090

# No HEALTHCHECK: Kubernetes probes the server with its native gRPC probes
# against grpc.health.v1 (k8s/base/deployment.yaml); outside Kubernetes run
# `highpeaks-ml health` in the container.

# The server drains on SIGTERM: health NOT_SERVING, new RPCs refused, in-flight
# ones get HIGHPEAKS_ML_GRACE_PERIOD_S to finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["highpeaks-ml", "serve"]
