# syntax=docker/dockerfile:1
# The dynaps runtime image: what a ParameterServerJob's pods run
# (`dynaps coordinator`, `dynaps server`, `dynaps worker -- COMMAND`) and `dynaps run` locally.
#
#   docker build -f docker/runtime.Dockerfile -t dynaps/runtime:0.1.0 .
#
# Two stages: wheels are built with the full toolchain, the final image only installs them
# (no compilers, no pip cache, no source tree). tests/dynaps_operator/test_images.py runs the
# `python -m pip` steps below in clean virtual environments, so keep them one per RUN line.
# Pinned base: a patch release of Python on a Debian release (pin the digest in your registry).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY operator operator
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels "/src[runtime]"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels "dynaps[runtime]"
RUN rm -rf /wheels \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin dynaps \
 && mkdir -p /var/lib/dynaps/checkpoints \
 && chown 10001:10001 /var/lib/dynaps/checkpoints
# Non-root; the operator's pods need no privileges (they bind their pod IP, ports above 1024).
USER 10001:10001
WORKDIR /tmp
EXPOSE 7070 7100 8080
ENTRYPOINT ["dynaps"]
CMD ["--help"]
