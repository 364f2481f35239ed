# Production image for Cloud Run: `docker build -t mdp .` then run with DATABASE_URL set.
# tests/deploy checks this file's structure and proves its install recipe on a real PostgreSQL.

# ---- builder: build the project wheel, install it and its pinned dependencies into /opt/venv ----
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what the wheel is built from: the same files tests/deploy/test_wheel_install.py copies.
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY errors errors
COPY access access
COPY mdp mdp
COPY handlers handlers
COPY live live
COPY web web
COPY persistence persistence
COPY ingestion ingestion
COPY openapi openapi

# Dependencies come from the project's own metadata ([project.dependencies], no extras: no
# embedded PostgreSQL, no test tools), pinned by the constraints file. Binary wheels only, so
# no compiler is ever needed; the venv gets no pip of its own (the base image's pip drives it).
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install \
        --only-binary=:all: \
        --constraint requirements/constraints.txt \
        /wheels/market_data_platform-*.whl

# ---- runtime: the interpreter, the venv and nothing else ----
FROM python:3.11.14-slim-bookworm AS runtime

# HOST: listen on every interface in the container. PORT: Cloud Run injects its own value (8080
# unless the service says otherwise); 8080 here keeps a plain `docker run -p 8080:8080` working.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8080

RUN groupadd --system --gid 10001 mdp \
 && useradd --system --uid 10001 --gid mdp --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mdp

# The same base image in both stages, so the venv's interpreter link and script shebangs hold.
COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8080

# No HEALTHCHECK: Cloud Run ignores it and probes the port itself. /health answers 503 while the
# database is down, so it must not be a liveness probe that restarts healthy instances.

# Exec form: mdp is PID 1 and receives Cloud Run's SIGTERM directly (no shell in between), so
# uvicorn drains requests and the lifespan stops ingestion and disposes the pool.
# The migration job overrides the command: `mdp migrate`.
ENTRYPOINT ["/opt/venv/bin/mdp"]
CMD ["serve"]
