# The user-code image: the project, its system packages and a non-root user. The Helm chart
# (deploy/helm/values.yaml) runs it as the code server (`dagster api grpc -m mmc4_assets`) and, via
# the K8sRunLauncher, as the pod of every run. Build from the project root:
#   docker build -t mmc4-assets:0.1.0 .
# BASE_IMAGE: any Debian-based image whose `python3` is 3.11 to 3.13.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: the venv. lapjv is published as source only, so its C++ extension needs a compiler
# (and Python's headers), which stay in this stage; so is Pillow-SIMD (the `simd` extra), built
# against the headers the Makefile's `pillow-simd-deps` installs.
FROM ${BASE_IMAGE} AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ python3-dev \
       libjpeg62-turbo-dev zlib1g-dev libwebp-dev libtiff-dev libopenjp2-7-dev \
    && rm -rf /var/lib/apt/lists/*
# The Makefile's steps: `python3 -m venv`, upgrade pip, install the project (a plain install here
# where the Makefile makes an editable one), with the `k8s` extra (every run pod loads the
# instance, whose run launcher lives in dagster-k8s) and the `simd` extra (Pillow-SIMD).
# PILLOW_SIMD_CC: Pillow-SIMD's resampling uses AVX2 when compiled with -mavx2 (every x86-64 server
# CPU since 2013; the image then needs one); `--build-arg PILLOW_SIMD_CC=cc` keeps it to SSE4.
ARG PILLOW_SIMD_CC="cc -mavx2"
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1
RUN python3 -m venv $VIRTUAL_ENV && pip install -q --upgrade pip
WORKDIR /opt/mmc4_assets
COPY pyproject.toml README.md ./
COPY mmc4_assets ./mmc4_assets
RUN CC="$PILLOW_SIMD_CC" pip install -q '.[k8s,simd]'

# ---- the image
FROM ${BASE_IMAGE}
# python-magic needs the system libmagic: the package the Makefile's `libmagic` target installs;
# Pillow-SIMD the libraries of the headers it was built against.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libmagic1 \
       libjpeg62-turbo zlib1g libwebp7 libwebpmux3 libwebpdemux2 libtiff6 libopenjp2-7 \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 --user-group mmc4 \
    && mkdir -p $DAGSTER_HOME && chown mmc4:mmc4 $DAGSTER_HOME
USER 10001
WORKDIR /home/mmc4
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-m", "mmc4_assets", "-h", "0.0.0.0", "-p", "3030"]
