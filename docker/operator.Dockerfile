# syntax=docker/dockerfile:1
# The dynaps operator image (charts/dynaps-operator runs it).
#
#   docker build -f docker/operator.Dockerfile -t dynaps/operator:0.1.0 .
#
# Two stages: wheels are built in the first, the final image only installs them. The operator
# needs no numpy and no ZeroMQ (it imports only dynaps.contract of the runtime), so its image
# is the `operator` extra alone. tests/dynaps_operator/test_images.py runs the `python -m pip`
# steps below in clean virtual environments, so keep them one per RUN line.
# Pinned base: a patch release of Python on a Debian release (pin the digest in your registry).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY operator operator
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels "/src[operator]"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels "dynaps[operator]"
RUN rm -rf /wheels \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin dynaps
# The chart's securityContext (runAsNonRoot, readOnlyRootFilesystem) matches this user.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["dynaps-operator"]
